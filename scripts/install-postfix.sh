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
#   - Delivery fates for the tests of issue 10 (test/serial/fate-postfix.test.ts, bench/fates.ts), so that
#     mail is really delivered, deferred, bounced and expired:
#       * `transport_maps = hash:/etc/postfix/transport, hash:/etc/postfix/transport-test-ports`.
#         The second table routes every subdomain of `p<PORT>.test`, for PORT 20000-20999, to
#         `smtp:[127.0.0.1]:<PORT>`: a test starts SMTP servers on loopback ports of that range that
#         answer 250, 4xx or 5xx, and names them in its recipients' domains
#         (`ann@bounced.<tag>.p20345.test`; test/support/postfix-fate.ts). So no table is edited and
#         Postfix is not reloaded while tests run: a `postfix reload` while a delivery is in flight
#         leaves that mail in the incoming queue for 60 s, until new mail or `postqueue -f` wakes
#         the queue manager (seen here; qmgr logs "skipped, still being delivered"). A regexp
#         table cannot do it: Postfix refuses `$1` substitution in transport maps. The first table
#         stays empty, for routing a domain of your own by hand (postmap, postfix reload). Any
#         other domain still goes to `error`.
#       * `smtp_host_lookup = native`: no DNS on a test machine; next hops are IP literals.
#       * Retries within seconds and a queue lifetime of 15 s, so that a test sees deferred mail
#         delivered and other mail expire: queue_run_delay = minimal_backoff_time = 1s,
#         maximal_backoff_time = 2s, maximal_queue_lifetime = bounce_queue_lifetime = 15s.
#         Measured here: a recipient deferred once is delivered 1-2 s later; one deferred
#         forever is logged `status=expired, returned to sender` 15 s after it arrived, with a
#         "Delayed Mail" DSN (delay_warning_time = 5s) before the failure DSN. The lifetime is
#         global: mail to a real domain never defers here (it bounces at once), and mail queued
#         while Postfix is stopped waits in maildrop, which does not count.
#       * bounce_template_file: Postfix's own DSN texts with times in seconds (the built-in ones
#         say "$delay_warning_time_hours hour(s)", which is 0 here and logs a warning per DSN).
#       * A second system user `outbox-bounces` with a Maildir (/home/outbox-bounces/Maildir):
#         the envelope sender of the fate tests, where Postfix's DSNs land for `mail-outbox ingest`
#         (`outbox-bounces+TOKEN@localhost` too, for VERP return paths).
#   - The daemon started (`postfix start`), or reloaded when it already runs.
#
# Environment: OUTBOX_TEST_USER (default outbox-test), OUTBOX_BOUNCE_USER (default outbox-bounces),
# POSTFIX_LOG (default /var/log/postfix.log).
set -euo pipefail

TEST_USER="${OUTBOX_TEST_USER:-outbox-test}"
BOUNCE_USER="${OUTBOX_BOUNCE_USER:-outbox-bounces}"
TRANSPORT_MAP=/etc/postfix/transport
TEST_PORTS_MAP=/etc/postfix/transport-test-ports
# Keep in step with TEST_PORTS in test/support/postfix-fate.ts.
TEST_PORT_FIRST=20000
TEST_PORT_LAST=20999
BOUNCE_TEMPLATES=/etc/postfix/bounce.cf
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

# The mailbox owners: the test user, and the bounce user whose Maildir collects DSNs. Maildir,
# so each message is its own file.
mailbox_user() {
  local user=$1 home
  if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /usr/sbin/nologin "$user"
  fi
  home=$(getent passwd "$user" | cut -d: -f6)
  install -d -o "$user" -g "$(id -gn "$user")" -m 0755 "$home" "$home/Maildir" \
    "$home/Maildir/new" "$home/Maildir/cur" "$home/Maildir/tmp"
}
mailbox_user "$TEST_USER"
mailbox_user "$BOUNCE_USER"
home_dir=$(getent passwd "$TEST_USER" | cut -d: -f6)
bounce_home=$(getent passwd "$BOUNCE_USER" | cut -d: -f6)

# The transport tables: the one for a person's own test domains (kept as it is when it exists),
# and the one for the tests' loopback servers (rewritten: it is ours).
if [ ! -f "$TRANSPORT_MAP" ]; then
  printf '%s\n' "# Domains routed by hand, e.g. 'example.test smtp:[127.0.0.1]:2525'; then postmap and postfix reload." > "$TRANSPORT_MAP"
fi
postmap "hash:$TRANSPORT_MAP"
{
  echo "# Written by scripts/install-postfix.sh: mail to any subdomain of p<PORT>.test goes to the SMTP"
  echo "# server of a test on 127.0.0.1:<PORT> (test/support/postfix-fate.ts)."
  seq "$TEST_PORT_FIRST" "$TEST_PORT_LAST" | awk '{ printf ".p%d.test smtp:[127.0.0.1]:%d\n", $1, $1 }'
} > "$TEST_PORTS_MAP"
postmap "hash:$TEST_PORTS_MAP"

# Postfix's DSN templates with every time in seconds: the built-in ones print
# delay_warning_time in hours and maximal_queue_lifetime in days, 0 with the values below.
# Made from the templates in effect, so running this again changes nothing.
[ -f "$BOUNCE_TEMPLATES" ] || postconf -X bounce_template_file
postconf -t | sed -e 's/\$delay_warning_time_hours hour(s)/$delay_warning_time_seconds second(s)/g' \
  -e 's/\$maximal_queue_lifetime_days day(s)/$maximal_queue_lifetime_seconds second(s)/g' > "$BOUNCE_TEMPLATES.new"
mv "$BOUNCE_TEMPLATES.new" "$BOUNCE_TEMPLATES"

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
  "biff = no" \
  "transport_maps = hash:$TRANSPORT_MAP, hash:$TEST_PORTS_MAP" \
  "smtp_host_lookup = native" \
  "queue_run_delay = 1s" \
  "minimal_backoff_time = 1s" \
  "maximal_backoff_time = 2s" \
  "maximal_queue_lifetime = 15s" \
  "bounce_queue_lifetime = 15s" \
  "delay_warning_time = 5s" \
  "bounce_template_file = $BOUNCE_TEMPLATES"

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
echo "install-postfix.sh: Postfix $version $action in ${elapsed}s; mail for $TEST_USER@localhost goes to $home_dir/Maildir/new, DSNs for $BOUNCE_USER@localhost to $bounce_home/Maildir/new, log $LOG_FILE"
