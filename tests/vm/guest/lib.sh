# Helpers of the guest test scripts (busybox sh).
FAILED=0
PASSED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
finish() {
  echo "guest tests: $PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ]
}
