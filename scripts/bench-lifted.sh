# "Rate limits lifted" (issue 24's conditions), sourced by scripts/bench.sh
# and scripts/bench-common.sh so every bench step runs under the same ones:
# the vendors' declared rates (the sync mock declares 50/s) and in-flight
# caps out of the way. As NAME=VALUE words for `env` or `export`.
# shellcheck disable=SC2034 # used by the scripts that source this file
LIFTED=(VENDORHOST_VENDOR_DEFAULTS__RATE=1000000 VENDORHOST_VENDOR_DEFAULTS__BURST=100000
  VENDORHOST_VENDOR_DEFAULTS__MAX_IN_FLIGHT=1024)
