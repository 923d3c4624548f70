-- Argo CD health check for aci-runners.dev/RunnerPool (kstatus-style conditions).
-- Stalled=True -> Degraded; stale status -> Progressing; Ready=True -> Healthy; Reconciling=False
-- (kstatus "Current": a pool churning in its steady state, runners recycled or added for demand)
-- -> Healthy; otherwise Progressing.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to report status"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions) do
  if c.type ~= nil then
    conditions[c.type] = c
  end
end
local ready, reconciling = conditions["Ready"], conditions["Reconciling"]
local function describe(c)
  local reason = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end
-- The first of these whose condition has that status decides: {condition, status, health}.
local rules = {
  { "Stalled", "True", "Degraded" },
  { "Ready", "True", "Healthy" },
  { "Reconciling", "False", "Healthy" },
}
for _, rule in ipairs(rules) do
  local c = conditions[rule[1]]
  if c ~= nil and c.status == rule[2] then
    hs.status = rule[3]
    hs.message = describe(c)
    return hs
  end
end
hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
elseif ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for runners"
end
return hs
