#!/bin/sh
# After the package is removed: make systemd forget the units.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
