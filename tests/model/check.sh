#!/usr/bin/env bash
# tests/model/check.sh — spin model-checks the move protocol
# (docs/model/move.pml): every run listed in docs/model/checks, each
# against its expectation. The real protocol must verify; every broken
# variant must be refuted (else this check could never fail); every probe
# must be reached. Exit 0 only if all of them came out as expected.
#
#   tests/model/check.sh [NAME...]     only the runs named
#
# Needs spin (Debian: spin) and a C compiler for pan: $MODEL_CC, else gcc,
# else cc (never the build's compiler: pan needs no sanitizers).
set -euo pipefail

want=("$@")
root=$(cd "$(dirname "$0")/../.." && pwd)
model=$root/docs/model/move.pml
checks=$root/docs/model/checks

MAX_RUNS=64         # lines in docs/model/checks
MAX_OPTS=12         # -D options on one line
RUN_TIMEOUT=${MODEL_RUN_TIMEOUT:-180} # seconds for one spin + cc + pan
PAN_MEMLIM=1536     # MiB pan may use for states
PAN_DEPTH=200000    # pan -m: search depth

die() {
    echo "model: $*" >&2
    exit 2
}

command -v spin >/dev/null || die "spin not found (Debian package spin; .ci/run installs it)"
cc=${MODEL_CC:-}
if [ -z "$cc" ]; then
    for c in gcc cc; do
        if command -v "$c" >/dev/null; then
            cc=$c
            break
        fi
    done
fi
[ -n "$cc" ] || die "no C compiler for pan (gcc or cc, or set MODEL_CC)"
command -v timeout >/dev/null || die "timeout (coreutils) not found"
[ -r "$model" ] || die "cannot read $model"
[ -r "$checks" ] || die "cannot read $checks"

# ---- read docs/model/checks, refusing anything malformed --------------------

names=() modes=() expects=() optss=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    line=${line%%#*}
    # shellcheck disable=SC2086
    set -- $line
    [ $# -eq 0 ] && continue
    where="$checks:$lineno"
    [ $# -ge 3 ] || die "$where: want NAME MODE EXPECT [-DOPTION ...], got '$line'"
    [[ $1 =~ ^[a-z0-9][a-z0-9-]{0,47}$ ]] || die "$where: bad name '$1' (a-z, 0-9, '-', at most 48)"
    case $2 in safety | liveness) ;; *) die "$where: mode '$2' is neither safety nor liveness" ;; esac
    case $3 in pass | fail | reach) ;; *) die "$where: expectation '$3' is not pass, fail or reach" ;; esac
    [ "$2" = liveness ] && [ "$3" = reach ] && die "$where: a probe (reach) must be a safety run"
    name=$1 mode=$2 expect=$3
    shift 3
    [ $# -le $MAX_OPTS ] || die "$where: more than $MAX_OPTS options"
    for o in "$@"; do
        [[ $o =~ ^-D[A-Z][A-Z0-9_]{0,39}(=[0-9]{1,6})?$ ]] || die "$where: bad option '$o' (want -DNAME or -DNAME=NUMBER)"
    done
    for n in "${names[@]}"; do
        [ "$n" != "$name" ] || die "$where: name '$name' used twice"
    done
    [ ${#names[@]} -lt $MAX_RUNS ] || die "$where: more than $MAX_RUNS runs"
    names+=("$name") modes+=("$mode") expects+=("$expect") optss+=("$*")
done <"$checks"
[ ${#names[@]} -gt 0 ] || die "$checks lists no run"

for w in "${want[@]}"; do
    found=0
    for n in "${names[@]}"; do [ "$n" = "$w" ] && found=1; done
    [ $found -eq 1 ] || die "no run named '$w' in $checks"
done

# ---- the step → C map: every file:function the model names still exists ---------

map_bad=0 map_n=0
while IFS=: read -r file fn; do
    map_n=$((map_n + 1))
    path=$(find "$root/src" -name "$file" -type f | head -2)
    if [ -z "$path" ] || [ "$(printf '%s\n' "$path" | wc -l)" -ne 1 ]; then
        echo "model: move.pml names $file:$fn, but src/ has no single $file"
        map_bad=1
    elif ! grep -qE "^[a-z_].*[^a-z0-9_]$fn\(" "$path"; then
        echo "model: move.pml names $file:$fn, but ${path#"$root"/} defines no $fn()"
        map_bad=1
    fi
done < <(grep -oE '\b[a-z_]+\.c:[a-z_]+' "$model" | sort -u)
[ $map_n -gt 0 ] || die "move.pml names no C function (file:function)"
if [ $map_bad -ne 0 ]; then
    echo "model: the model's map to the C code is stale: update docs/model/move.pml"
    exit 1
fi
echo "model: the $map_n file:function references in move.pml exist in src/"

# ---- run them ------------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/tern-model.XXXXXX")
trap 'rm -rf "$work"' EXIT

bad=0 ran=0
t_all=$(date +%s%N)
for i in "${!names[@]}"; do
    name=${names[$i]} mode=${modes[$i]} expect=${expects[$i]}
    read -r -a opts <<<"${optss[$i]}"
    if [ ${#want[@]} -gt 0 ]; then
        sel=0
        for w in "${want[@]}"; do [ "$w" = "$name" ] && sel=1; done
        [ $sel -eq 1 ] || continue
    fi
    ran=$((ran + 1))
    d=$work/$name
    mkdir "$d"
    cp "$model" "$d/move.pml"
    t0=$(date +%s%N)
    spin_opts=("${opts[@]}")
    cflags=("-DMEMLIM=$PAN_MEMLIM")
    pan_opts=("-m$PAN_DEPTH")
    if [ "$mode" = liveness ]; then
        spin_opts+=(-DLIVENESS)
        pan_opts+=(-a -f)
    else
        cflags+=(-DSAFETY)
    fi
    # -O0: pan compiles in a second and these state spaces are small, so
    # an optimised pan costs more to build than it saves.
    cflags+=(-O0)
    # Probes: go on past each hit (-c0), to see every probe fire.
    [ "$expect" = reach ] && pan_opts+=(-c0)
    verdict="" detail=""
    if ! (cd "$d" && timeout "$RUN_TIMEOUT" spin "${spin_opts[@]}" -a move.pml >spin.out 2>&1); then
        verdict=ERROR detail="spin -a failed: $(tail -3 "$d/spin.out" | tr '\n' ' ')"
    elif ! (cd "$d" && timeout "$RUN_TIMEOUT" "$cc" "${cflags[@]}" -o pan pan.c >cc.out 2>&1); then
        verdict=ERROR detail="$cc failed on pan.c: $(head -3 "$d/cc.out" | tr '\n' ' ')"
    else
        set +e
        (cd "$d" && timeout "$RUN_TIMEOUT" ./pan "${pan_opts[@]}" >pan.out 2>&1)
        rc=$?
        set -e
        out=$d/pan.out
        errors=$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' "$out" | tail -1)
        states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out" | tail -1)
        if [ "$expect" = reach ]; then
            # every probe number in the model, and the ones that fired
            all=$(grep -o 'REACHED([0-9][0-9]*' "$model" | tr -dc '0-9\n' | sort -un | tr '\n' ' ')
            hit=$(sed -n 's/^pan:[0-9]*: assertion violated .*||(\([0-9]*\)==0)).*/\1/p' "$out" | sort -un | tr '\n' ' ')
            missing=""
            for n in $all; do
                case " $hit " in *" $n "*) ;; *) missing="$missing $n" ;; esac
            done
        fi
        if [ $rc -eq 124 ]; then
            verdict=ERROR detail="pan ran out of time (${RUN_TIMEOUT}s)"
        elif grep -q "out of memory\|depth too small" "$out"; then
            verdict=ERROR detail="pan's search was cut short: $(grep -m1 "out of memory\|depth too small" "$out")"
        elif [ -z "$errors" ]; then
            verdict=ERROR detail="pan printed no result (exit $rc): $(tail -3 "$out" | tr '\n' ' ')"
        elif [ "$expect" = reach ]; then
            if [ -z "$all" ]; then
                verdict=ERROR detail="no REACHED(n, ...) probe in the model"
            elif grep -q "Search not completed" "$out"; then
                verdict=ERROR detail="pan did not complete the search"
            elif [ -n "$missing" ]; then
                verdict=WRONG detail="probes never reached:$missing (the model does not get there)"
            else
                verdict=ok detail="every probe reached: $all"
            fi
        elif [ "$errors" -eq 0 ]; then
            if grep -q "Search not completed" "$out"; then
                verdict=ERROR detail="pan did not complete the search"
            elif [ "$expect" = pass ]; then
                verdict=ok detail="verified, $states states"
            else
                verdict=WRONG detail="the broken variant verified: this check cannot fail"
            fi
        else
            first=$(grep -m1 "assertion violated\|acceptance cycle\|invalid end state" "$out" || true)
            if [ "$expect" = pass ]; then
                verdict=WRONG detail="counterexample: $first"
            elif [ "$mode" = liveness ] && [[ $first == *"acceptance cycle"* ]]; then
                verdict=ok detail="refuted as it must be: $first"
            elif [ "$mode" = safety ] && [[ $first == *"assertion violated"* ]]; then
                verdict=ok detail="refuted as it must be (at ${first##*(at }"
            else
                verdict=WRONG detail="failed for another reason than expected: $first"
            fi
        fi
    fi
    ms=$((($(date +%s%N) - t0) / 1000000))
    printf 'model: %-30s %-8s %-5s %-5s %5d ms  %s\n' "$name" "$mode" "$expect" "$verdict" "$ms" "$detail"
    if [ "$verdict" != ok ]; then
        bad=$((bad + 1))
        if [ -f "$d/pan.out" ]; then
            echo "---- pan output ($name)"
            tail -25 "$d/pan.out"
        fi
        if [ -f "$d/move.pml.trail" ] && [ "$expect" = pass ]; then
            echo "---- counterexample, last steps (replay: spin ${opts[*]} -t -p docs/model/move.pml)"
            (cd "$d" && spin "${spin_opts[@]}" -t -p -g move.pml 2>&1 | tail -60) || true
        fi
    fi
done
total_ms=$((($(date +%s%N) - t_all) / 1000000))
if [ $bad -ne 0 ]; then
    echo "model: $bad of $ran runs not as expected (${total_ms} ms)"
    exit 1
fi
echo "model: all $ran runs as expected (${total_ms} ms)"
