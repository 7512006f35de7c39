# Shared by scripts/gpu_check.sh and scripts/gpu_check_trt.sh (sourced, not run): notes, the
# bounded steps and the markdown summary. The caller sets OUT, summary, limit, t0, rows=(),
# notes=() and summary_head (the summary's first line after the title).

note() { notes+=("$*"); echo "gpu-check: $*" >&2; }

write_summary() {
  {
    echo "# GPU check"
    echo
    echo "$summary_head, $((SECONDS - t0)) s in all (limit ${limit} s)."
    echo
    if command -v nvidia-smi >/dev/null 2>&1; then
      echo '```'
      nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 | head -n 5
      echo '```'
      echo
    fi
    echo "| step | result | seconds | log |"
    echo "|---|---|---|---|"
    for r in "${rows[@]}"; do echo "$r"; done
    echo
    for n in "${notes[@]}"; do echo "- $n"; done
    for f in "$OUT"/section-*.md; do
      [[ -e $f ]] || continue
      echo
      cat "$f"
    done
  } >"$summary"
  echo "gpu-check: summary in $summary" >&2
}

# step NAME TIMEOUT_S COMMAND...: runs it with a time limit (never past the overall limit),
# logs to logs/NAME.log, and records pass / FAIL / skipped. A shell function (exported with
# its variables) runs in a child bash under timeout.
step() {
  local name=$1 tmo=$2
  shift 2
  local left=$((limit - (SECONDS - t0)))
  if ((left < 15)); then
    rows+=("| $name | skipped: the ${limit} s limit is spent | 0 | |")
    return 1
  fi
  ((tmo > left)) && tmo=$left
  local log=$OUT/logs/$name.log s=$SECONDS rc
  echo "gpu-check: [$name] (≤ ${tmo} s)" >&2
  if declare -F "$1" >/dev/null; then
    timeout --kill-after=10 "$tmo" bash -c '"$@"' _ "$@" >"$log" 2>&1
  else
    timeout --kill-after=10 "$tmo" "$@" >"$log" 2>&1
  fi
  rc=$?
  local took=$((SECONDS - s)) what
  if ((rc == 0)); then
    what=pass
  elif ((rc == 124 || rc == 137)); then
    what="**FAIL**: timed out after ${tmo} s"
  else
    what="**FAIL** (exit $rc): $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-160 | tr '|' '/')"
  fi
  rows+=("| $name | $what | $took | logs/$name.log |")
  return "$rc"
}

skip() { rows+=("| $1 | skipped: $2 | 0 | |"); }
