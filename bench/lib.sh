# Shared by the benchmark scripts (sourced, not run).

# The CPU seconds every PostgreSQL process on this machine has used: live processes' own,
# plus what the postmaster collected from its ended children (a godwit run's backends).
pg_cpu() {
  local tick total=0 pid fields
  tick=$(getconf CLK_TCK)
  for pid in $(pgrep -x postgres; pgrep -f '^postgres: '); do
    fields=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
    # Fields after the command: utime, stime, cutime, cstime are the 12th-15th.
    total=$(echo "$fields" | awk -v t="$total" '{print t + $12 + $13 + $14 + $15}')
  done
  echo "$total / $tick" | bc -l
}
