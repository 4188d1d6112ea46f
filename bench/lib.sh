# shellcheck shell=bash
# bench/lib.sh — measurement helpers shared by the bench/ scripts. Source it.
#
# snap/report are copied from ../shared/peers/lib.sh (the perfpeer recipe that
# measures Postfix + Dovecot on this machine), unchanged except for the
# comments, so a tern RESULT line and a peer RESULT line are computed the same
# way: whole-machine CPU busy jiffies from /proc/stat (load generator
# included, as for the peer) and the disk's sectors written, write I/Os and
# flushes completed from /proc/diskstats.
#
# Set DISK (a /proc/diskstats device name) before calling snap, e.g. with
# bench_disk_of DIR.

# bench_disk_of DIR: the whole-disk device under DIR's filesystem (as perfpeer picks it)
bench_disk_of() {
    local src d
    src=$(findmnt -no SOURCE --target "$1")
    d=$(lsblk -no PKNAME "$src" 2>/dev/null | head -1 || true)
    [ -n "$d" ] || d=$(basename "$src")
    echo "$d"
}

now() { date +%s.%N; }

# snapshot: cpu busy jiffies, cpu total jiffies, sectors written, write ios, flushes completed
snap() {
    local cpu dsk
    cpu=$(awk '/^cpu /{b=$2+$3+$4+$7+$8; t=b+$5+$6; print b, t}' /proc/stat)
    dsk=$(awk -v d="$DISK" '$3==d{print $10, $8, ($19==""?0:$19)}' /proc/diskstats)
    echo "$cpu $dsk"
}

# report NAME COUNT T0 T1 SNAP0 SNAP1 [extra] — one RESULT line, same fields as perfpeer
report() {
    local name=$1 n=$2 t0=$3 t1=$4
    shift 4
    local b0 tt0 s0 w0 f0 b1 tt1 s1 w1 f1
    read -r b0 tt0 s0 w0 f0 <<<"$1"
    read -r b1 tt1 s1 w1 f1 <<<"$2"
    shift 2
    awk -v name="$name" -v n="$n" -v t0="$t0" -v t1="$t1" -v b0="$b0" -v b1="$b1" -v tt0="$tt0" -v tt1="$tt1" \
        -v s0="$s0" -v s1="$s1" -v w0="$w0" -v w1="$w1" -v f0="$f0" -v f1="$f1" -v extra="$*" -v hz="$(getconf CLK_TCK)" 'BEGIN{
    el=t1-t0; cpu=(b1-b0)/hz; util=(tt1>tt0)?100*(b1-b0)/(tt1-tt0):0;
    printf "RESULT %-28s msgs=%d secs=%.2f msg_per_s=%.0f cpu_busy=%.0f%% cpu_ms_per_msg=%.3f disk_MB=%.1f disk_KB_per_msg=%.1f write_ios_per_msg=%.2f flushes_per_msg=%.3f %s\n",
      name, n, el, n/el, util, 1000*cpu/n, (s1-s0)*512/1e6, (s1-s0)*512/1024/n, (w1-w0)/n, (f1-f0)/n, extra }'
}

# field NAME LINE: the value of NAME=VALUE in a RESULT line (empty if absent)
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# median V...: the median of numbers (mean of the two middle ones for an even count)
median() {
    [ $# -gt 0 ] || { echo "-"; return; }
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{ if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'
}

# free_port: an unused TCP port on 127.0.0.1 (chosen by the kernel)
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# port_open PORT: true if something accepts TCP connections on 127.0.0.1:PORT
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
