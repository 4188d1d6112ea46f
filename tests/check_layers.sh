#!/bin/sh
# Layering check: lower layers never include higher ones (docs/architecture.md).
# Each module may include only the modules listed for it.
src=${1:-src}
status=0
allowed() {
    case "$1" in
        util) echo "util" ;;
        mail) echo "util mail" ;;
        config) echo "util mail config" ;;
        smtp) echo "util mail smtp" ;;
        imap) echo "util imap" ;;
        net) echo "util net" ;;
        directory) echo "util mail directory" ;;
        store) echo "util mail store" ;;
        sync) echo "util mail store sync" ;;
        syncd) echo "util mail store net sync syncd" ;;
        smtpd) echo "util mail smtp net smtpd" ;;
        role_store) echo "util mail config smtp smtpd net directory store syncd role_store" ;;
        queue) echo "util mail queue" ;;
        dsn) echo "util mail dsn" ;;
        mime) echo "util mime" ;;
        mbox) echo "util mail mbox" ;;
        maildir) echo "util mail maildir" ;;
        lmtpc) echo "util mail smtp lmtpc" ;;
        router) echo "util mail directory router" ;;
        role_mta) echo "util mail config smtp smtpd net directory queue dsn lmtpc router role_mta" ;;
        move) echo "util mail store directory sync move" ;;
        import) echo "util mail imap mbox maildir store directory sync import" ;;
        role_mover) echo "util mail config directory store sync move import role_mover" ;;
        doctor) echo "util mail config directory store sync move doctor" ;;
        serve) echo "util mail config directory serve" ;;
        mime) echo "util mime" ;;
        imapd) echo "util mail imap mime store sync imapd" ;;
        role_imap) echo "util mail config directory store sync imap mime imapd role_imap" ;;
        cli) echo "util mail config directory store queue sync move import serve role_store role_mta role_mover role_imap doctor cli" ;;
        *) echo "" ;;
    esac
}
for dir in "$src"/*/; do
    mod=$(basename "$dir")
    ok=$(allowed "$mod")
    if [ -z "$ok" ]; then
        echo "layers: module $mod is not listed in tests/check_layers.sh"; status=1; continue
    fi
    for inc in $(grep -ho '#include "[a-z_]*/' "$dir"*.[ch] 2>/dev/null | sed 's/#include "//; s/\///' | sort -u); do
        case " $ok " in
            *" $inc "*) ;;
            *) echo "layers: $mod includes $inc, which it must not"; status=1 ;;
        esac
    done
done
# Third-party types stay inside the one module that wraps them.
third_party() {
    # header-prefix  modules-allowed
    for f in $(grep -l "#include <$1" "$src"/*/*.[ch] 2>/dev/null); do
        mod=$(basename "$(dirname "$f")")
        case " $2 " in
            *" $mod "*) ;;
            *) echo "layers: $f includes <$1...>, which only [$2] may"; status=1 ;;
        esac
    done
}
third_party "sqlite3.h" "directory store queue"
third_party "event2/" "net"
third_party "openssl/" "util"
third_party "crypt.h" "directory"
third_party "gmime/" "mime"
third_party "glib" "mime"
[ $status -eq 0 ] && echo "layers: ok"
exit $status
