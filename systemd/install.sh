#!/bin/sh
# Install the monitor as a service: `make install-service` runs this (as root), `make uninstall-service` the
# `uninstall` half. Settings come from the environment (make passes them):
#   PREFIX    the code and its own virtualenv              default /opt/sem-line-monitor
#   EXPORT    the microscope export folder; with LINES, the parent of one folder per line  default /srv/sem-export
#   LINES     "line1 line2": one monitor@LINE instance each (configuration /etc/sem-line-monitor/LINE.yaml);
#             empty: one monitor.service (/etc/sem-line-monitor/config.yaml) for the line named LINE (default line1)
#   DESTDIR   a scratch root to install into instead of / (no user, no chown, no systemctl; for tests and packaging)
#   EXTRAS    empty: the line PC's runtime (scoring, the daemon, the page: no torch, about 0.5 GB); "fit": also what
#             fitting and refitting need (torch, torchvision, the backbone's weights, scikit-learn: about 6 GB)
#   DEPS_FROM a site-packages folder whose packages the new virtualenv uses instead of installing its own
#             (tests); empty: pip installs the tested set (constraints.txt)
#   PY        the Python that makes the virtualenv (default python3.11)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
root=${DESTDIR:-}
prefix=${PREFIX:-/opt/sem-line-monitor}
export_dir=${EXPORT:-/srv/sem-export}
lines=${LINES:-}
py=${PY:-python3.11}
etc=/etc/sem-line-monitor
state=/var/lib/sem-line-monitor
units=/etc/systemd/system

say() { echo "install-service: $*"; }

if [ "${1:-install}" = uninstall ]; then
    for u in "$root$units"/monitor.service "$root$units"/monitor@.service; do
        [ -e "$u" ] && rm -f "$u" && say "removed $u"
    done
    rm -rf "$root$prefix" && say "removed $root$prefix"
    [ -z "$root" ] && command -v systemctl >/dev/null && systemctl daemon-reload || true
    say "kept $root$etc (configuration) and $root$state (models, ledgers, overlays); remove them by hand if wanted"
    exit 0
fi

# The units' hardening hides these from the service: ProtectHome (/home, /root, /run/user), PrivateTmp (/tmp,
# /var/tmp). A prefix or export folder there would be invisible to it.
hidden() {
    case "$1" in
        /home|/home/*|/root|/root/*|/run/user|/run/user/*) echo "ProtectHome=yes";;
        /tmp|/tmp/*|/var/tmp|/var/tmp/*) echo "PrivateTmp=yes";;
    esac
}
for what in "PREFIX=$prefix" "EXPORT=$export_dir"; do
    p=${what#*=}
    h=$(hidden "$p")
    [ -n "$h" ] && say "WARNING: ${what%%=*} $p is hidden from the service by $h in its unit: it will not start" \
        "(or see no images). Use a path outside /home, /root, /run/user, /tmp and /var/tmp." >&2
done

# 1. the code and its own virtualenv under PREFIX (a copy, not the checkout: the clone can go away)
install -d "$root$prefix"
for f in README.md LICENSE CHANGELOG.md config.yaml constraints.txt; do
    install -m 0644 "$here/$f" "$root$prefix/$f"
done
rm -rf "$root$prefix/ops" && cp -R "$here/ops" "$root$prefix/ops"
"$py" -m venv "$root$prefix/.venv"
pip="$root$prefix/.venv/bin/python -m pip --disable-pip-version-check --quiet"
if [ -n "${DEPS_FROM:-}" ]; then
    $pip install --no-deps "$here"
    site=$("$root$prefix/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$DEPS_FROM" > "$site/sem-line-monitor-deps.pth"
    say "dependencies from $DEPS_FROM"
else
    $pip install -c "$here/constraints.txt" "$here${EXTRAS:+[$EXTRAS]}"
fi
"$root$prefix/.venv/bin/python" -m monitor --version

# 2. the units, rendered for PREFIX and EXPORT
"$here/systemd/render.sh" "$prefix" "$export_dir" "$root$units"

# 3. one configuration per instance (or the single one), never overwriting a site's own
render() {  # render FILE LINE EXPORT_FOLDER STATE_FOLDER METRICS_PORT WEB_PORT
    if [ -e "$root$1" ]; then
        say "kept $1 (it exists; compare with $prefix/config.yaml)"
        return
    fi
    install -d "$root$(dirname "$1")" "$root$4"
    "$root$prefix/.venv/bin/python" - "$here/config.yaml" "$root$1" "$2" "$3" "$4" "$5" "$6" <<'PY'
import json, re, sys
src, dest, line, export, state, mport, wport = sys.argv[1:]
q = json.dumps  # a JSON string is a YAML string: paths with spaces, colons or '#' stay intact
text = open(src).read()
def put(key, value, text):
    # the value of `  key: ...` under its section, comment kept
    new, n = re.subn(rf"(?m)^(  {key}:\s*)(\S+)", lambda m: m.group(1) + value, text, count=1)
    assert n == 1, key
    return new
for key, value in (("path", q(f"{state}/model")), ("dir", q(export)), ("line", q(line))):
    text = put(key, value, text)
text = re.sub(r"(?m)^(output:\n  dir:\s*)\S+", lambda m: m.group(1) + q(f"{state}/output"), text, count=1)
text = put("ledger", q(f"{state}/ledger.sqlite"), text)
text = re.sub(r"(?m)^(metrics:\n(?:  .*\n)*?  port:\s*)\d+", lambda m: m.group(1) + mport, text, count=1)
text = re.sub(r"(?m)^(web:.*\n(?:  .*\n)*?  port:\s*)\d+", lambda m: m.group(1) + wport, text, count=1)
open(dest, "w").write(f"# rendered by make install-service for line {line}\n" + text)
PY
    chmod 0644 "$root$1"
    say "wrote $1 (line $2, export folder $3, state $4, metrics port $5, web port $6)"
}
if [ -n "$lines" ]; then
    i=0
    for line in $lines; do
        render "$etc/$line.yaml" "$line" "$export_dir/$line" "$state/$line" $((9808 + i)) $((9880 + i))
        i=$((i + 1))
    done
else
    render "$etc/config.yaml" "${LINE:-line1}" "$export_dir" "$state" 9808 9880
fi

# 4. the system user, ownership of the state folders, systemd: only on the real root
if [ -z "$root" ]; then
    id -u sem-monitor >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin sem-monitor
    chown -R sem-monitor:sem-monitor "$state"
    command -v systemctl >/dev/null && systemctl daemon-reload
fi
if [ -n "$lines" ]; then
    for line in $lines; do
        say "next: monitor install-model MODEL_DIR --config $etc/$line.yaml; systemctl enable --now monitor@$line"
    done
else
    say "next: monitor install-model MODEL_DIR --config $etc/config.yaml; systemctl enable --now monitor"
fi
