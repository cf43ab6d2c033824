# Shared by the end-to-end test scripts (sourced): a scratch directory, pass/fail counters
# and `expect`; the sourcing script writes its scratch files under $WORK and ends with `summary`.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*"; }

# expect CODE PATTERN -- command...: exit code and a stderr line matching PATTERN; a
# runtime error (code 1) must be a one-line message.
expect() {
  local code=$1 pattern=$2
  shift 3
  "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  if [ "$rc" -ne "$code" ]; then
    bad "$* exited $rc, expected $code; stderr: $(head -c 400 "$WORK/err")"
    return
  fi
  if [ -n "$pattern" ] && ! grep -qE -- "$pattern" "$WORK/err"; then
    bad "$*: stderr does not match '$pattern': $(head -c 400 "$WORK/err")"
    return
  fi
  if [ "$code" -eq 1 ] && [ "$(wc -l <"$WORK/err")" -ne 1 ]; then
    bad "$*: error message is not one line: $(cat "$WORK/err")"
    return
  fi
  ok
}

# Prints the counts; the script's exit status is whether nothing failed.
summary() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
