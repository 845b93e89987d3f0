#!/bin/sh
# Render the units for this host: render.sh PREFIX EXPORT_DIR OUT_DIR
#   PREFIX      where the project is installed (its .venv/bin/monitor runs), default /opt/sem-line-monitor
#   EXPORT_DIR  the microscope export folder (monitor@.service: the parent of one folder per instance)
set -eu
prefix=${1:?PREFIX}; export_dir=${2:?EXPORT_DIR}; out=${3:?OUT_DIR}
here=$(dirname "$0")
mkdir -p "$out"
for unit in monitor.service monitor@.service; do
    sed -e "s#/opt/sem-line-monitor#$prefix#g" -e "s#/srv/sem-export#$export_dir#g" "$here/$unit" > "$out/$unit"
done
