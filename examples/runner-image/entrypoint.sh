#!/usr/bin/env bash
# Entry point of a token-mode runner image: reads the RUNNER_* variables set by
# aci-runner-controller, registers the runner with config.sh, then runs it.
#
#   RUNNER_URL        https://github.com/ORG or https://github.com/OWNER/REPO (required)
#   RUNNER_TOKEN      registration token, an ACI secure value (required; never printed)
#   RUNNER_NAME       runner name = container group name (required)
#   RUNNER_LABELS     comma-separated custom labels
#   RUNNER_GROUP      runner group (organization/enterprise scope)
#   RUNNER_WORKDIR    work folder (default _work)
#   RUNNER_EPHEMERAL  "true" (one job, then exit) or "false"
#   RUNNER_HOME       where config.sh/run.sh live (default /home/runner; for tests)
set -euo pipefail

fail() { echo "runner-entrypoint: $*" >&2; exit 64; }

[ -n "${RUNNER_URL:-}" ] || fail "RUNNER_URL is not set"
[ -n "${RUNNER_TOKEN:-}" ] || fail "RUNNER_TOKEN is not set"
[ -n "${RUNNER_NAME:-}" ] || fail "RUNNER_NAME is not set"
case "${RUNNER_EPHEMERAL:-true}" in
  true | false) ;;
  *) fail "RUNNER_EPHEMERAL must be true or false, got '${RUNNER_EPHEMERAL}'" ;;
esac

home="${RUNNER_HOME:-/home/runner}"
cd "$home"

args=(--unattended --replace
  --url "$RUNNER_URL"
  --name "$RUNNER_NAME"
  --work "${RUNNER_WORKDIR:-_work}")
[ -n "${RUNNER_LABELS:-}" ] && args+=(--labels "$RUNNER_LABELS")
[ -n "${RUNNER_GROUP:-}" ] && args+=(--runnergroup "$RUNNER_GROUP")
[ "${RUNNER_EPHEMERAL:-true}" = true ] && args+=(--ephemeral)

echo "runner-entrypoint: registering ${RUNNER_NAME} at ${RUNNER_URL} (ephemeral=${RUNNER_EPHEMERAL:-true})"
# The token reaches config.sh only through ACTIONS_RUNNER_INPUT_TOKEN (the runner reads any
# --ARG from ACTIONS_RUNNER_INPUT_ARG), so it is never on a command line; it is removed from this
# shell's environment first so that run.sh and the job steps never inherit it.
token="$RUNNER_TOKEN"
unset RUNNER_TOKEN
ACTIONS_RUNNER_INPUT_TOKEN="$token" ./config.sh "${args[@]}"
unset token

# Non-ephemeral runners stay registered across restarts of the process; the controller removes
# the registration when it deletes the container group, so no deregistration is needed here.
exec ./run.sh
