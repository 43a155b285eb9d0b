#!/usr/bin/env bash
# Install and configure a local-only Postfix for the sendmail / sendmail-bs tests.
#
# Idempotent: run it as often as you like (CI runs it on every build). As root.
#
# What it sets up:
#   - Postfix from Debian's packages ("Local only", mailname localhost), if it is not installed yet.
#   - Listening on loopback only; mail for any domain but localhost is bounced by the `error`
#     transport, so nothing ever leaves the machine.
#   - A system user `outbox-test` whose mail is delivered to /home/outbox-test/Maildir/new/
#     (one file per message: a test finds its mail by grepping for the Message-ID).
#     `outbox-test+tag@localhost` lands there too (recipient_delimiter = +). Recipient checks stay
#     at Postfix's defaults (local_recipient_maps), as on a real server: unknown local users are
#     refused with 550, and `sendmail -bs` blocks while the daemon is stopped (its stand-alone
#     smtpd asks the trivial-rewrite service about each recipient).
#   - Postfix logs to /var/log/postfix.log (maillog_file, Postfix >= 3.4; there is no syslog in
#     containers). The tests read queue ids from it: `postfix/cleanup[..]: QUEUEID: message-id=<..>`.
#   - The daemon started (`postfix start`), or reloaded when it already runs.
#
# Environment: OUTBOX_TEST_USER (default outbox-test), POSTFIX_LOG (default /var/log/postfix.log).
set -euo pipefail

TEST_USER="${OUTBOX_TEST_USER:-outbox-test}"
LOG_FILE="${POSTFIX_LOG:-/var/log/postfix.log}"
started_at=$(date +%s.%N)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-postfix.sh: run me as root (apt-get, useradd and postfix need it)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if [ ! -x /usr/sbin/postfix ]; then
  echo "install-postfix.sh: installing postfix"
  printf '%s\n' \
    "postfix postfix/main_mailer_type select Local only" \
    "postfix postfix/mailname string localhost" \
    "postfix postfix/destinations string localhost, localhost.localdomain" \
    | debconf-set-selections
  echo localhost > /etc/mailname
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends postfix >/dev/null
fi

version=$(postconf -h mail_version)
major=${version%%.*}
rest=${version#*.}
minor=${rest%%.*}
if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 4 ]; }; then
  echo "install-postfix.sh: Postfix $version is older than 3.4 and cannot log to a file (maillog_file)" >&2
  exit 1
fi

# The mailbox owner. Maildir, so each message is its own file.
if ! id "$TEST_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /usr/sbin/nologin "$TEST_USER"
fi
home_dir=$(getent passwd "$TEST_USER" | cut -d: -f6)
install -d -o "$TEST_USER" -g "$(id -gn "$TEST_USER")" -m 0755 "$home_dir" "$home_dir/Maildir" \
  "$home_dir/Maildir/new" "$home_dir/Maildir/cur" "$home_dir/Maildir/tmp"

echo localhost > /etc/mailname
postconf -e \
  "myhostname = localhost" \
  "mydomain = localdomain" \
  "myorigin = localhost" \
  "mydestination = localhost, localhost.localdomain, \$myhostname" \
  "inet_interfaces = loopback-only" \
  "inet_protocols = ipv4" \
  "mynetworks = 127.0.0.0/8" \
  "relayhost =" \
  "default_transport = error:outbound mail is disabled on this test machine" \
  "relay_transport = error:outbound mail is disabled on this test machine" \
  "home_mailbox = Maildir/" \
  "mailbox_command =" \
  "mailbox_size_limit = 0" \
  "recipient_delimiter = +" \
  "maillog_file = $LOG_FILE" \
  "smtputf8_enable = yes" \
  "biff = no"

# postlogd writes maillog_file; Debian's master.cf has it, an older one may not.
if ! postconf -M postlog/unix-dgram >/dev/null 2>&1 || [ -z "$(postconf -M postlog/unix-dgram 2>/dev/null)" ]; then
  postconf -M "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd"
fi

touch "$LOG_FILE"
chmod 0644 "$LOG_FILE"
[ -f /etc/aliases ] || echo "postmaster: root" > /etc/aliases
newaliases

# Chrooted Postfix daemons need copies of a few files (/etc/services, resolv.conf...). Debian's
# init script copies them on start; `postfix start` alone does not, so do it here.
if [ -x /usr/lib/postfix/configure-instance.sh ]; then
  /usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true
fi

postfix check
if postfix status >/dev/null 2>&1; then
  postfix reload >/dev/null 2>&1
  action=reloaded
else
  postfix start >/dev/null 2>&1
  action=started
fi

# Wait until the master daemon answers (it forks into the background).
for _ in $(seq 1 50); do
  postfix status >/dev/null 2>&1 && break
  sleep 0.1
done
postfix status >/dev/null 2>&1 || { echo "install-postfix.sh: postfix did not start; see $LOG_FILE" >&2; exit 1; }

elapsed=$(awk -v s="$started_at" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
echo "install-postfix.sh: Postfix $version $action in ${elapsed}s; mail for $TEST_USER@localhost goes to $home_dir/Maildir/new, log $LOG_FILE"
