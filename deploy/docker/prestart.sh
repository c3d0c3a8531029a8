#!/bin/sh
# Database migrations as a step of their own, before any service process starts (never at import).
#   prestart.sh upgrade   run `alembic upgrade head` (compose's `migrate` service, the k8s migration Job)
#   prestart.sh wait      block until the database is at head (init container of API and worker pods,
#                         so a new image never serves against an old schema); gives up after
#                         PRESTART_WAIT_S seconds (default 600).
# Reads the database URL the way the app does (core.settings, TIMEMARK_DATABASE_URL) through alembic.ini.
set -eu
cd "${PRESTART_APP_DIR:-/app}"  # where alembic.ini and migrations/ live in the image
mode="${1:-upgrade}"
case "$mode" in
  upgrade)
    exec alembic upgrade head
    ;;
  wait)
    deadline=$(( $(date +%s) + ${PRESTART_WAIT_S:-600} ))
    until alembic current 2>/dev/null | grep -q '(head)'; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "prestart: database not at the migration head after ${PRESTART_WAIT_S:-600} s" >&2
        exit 1
      fi
      echo "prestart: waiting for migrations to reach head" >&2
      sleep 5
    done
    ;;
  *)
    echo "usage: prestart.sh upgrade|wait" >&2
    exit 2
    ;;
esac
