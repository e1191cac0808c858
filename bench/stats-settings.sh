# The settings bench/stats-ab.sh and bench/stats-instructions.sh compare, sourced by both: each defines
# run NAME BINARY [SERVE OPTIONS...] and sets base, new and port before calling one SETTING.
#   base            BASE, the build before issue 18
#   new-off         --log-level none, no metrics listener      (logging and metrics off)
#   new-default     the default level (warning), no listener   (what serve does unless asked)
#   new-metrics     default level, --metrics-listen            (OpenTelemetry attached: the counters, read from
#                                                               the statistics at collection)
#   new-histograms  the same and --metrics-histograms          (the request-duration histogram recorded too)
#   new-all         --log-level debug, --metrics-listen and --metrics-histograms (everything on)
# shellcheck shell=bash
settings=(base new-off new-default new-metrics new-histograms new-all)
one() { # SETTING
  case $1 in
    base) run base "$base" ;;
    new-off) run new-off "$new" --log-level none ;;
    new-default) run new-default "$new" ;;
    new-metrics) run new-metrics "$new" --metrics-listen "127.0.0.1:$port" ;;
    new-histograms) run new-histograms "$new" --metrics-listen "127.0.0.1:$port" --metrics-histograms ;;
    new-all) run new-all "$new" --log-level debug --metrics-listen "127.0.0.1:$port" --metrics-histograms ;;
  esac
}
