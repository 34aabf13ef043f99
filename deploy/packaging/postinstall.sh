#!/bin/sh
# After the package is installed or upgraded: make systemd see the units.
# The service is neither enabled nor started: edit /etc/pj/pj.yaml, then
# `systemctl enable --now pj`. A running pj goes on with the old binary
# until `systemctl restart pj`.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
