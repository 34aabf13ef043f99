#!/bin/sh
# Before the package is removed (not upgraded): stop pj. dpkg passes
# "remove"; rpm passes 0 when no version remains.
set -e
case "$1" in
remove | 0)
	if [ -d /run/systemd/system ]; then
		systemctl disable --now pj.service pj.socket >/dev/null 2>&1 || true
	fi
	;;
esac
