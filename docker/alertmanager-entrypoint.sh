#!/bin/sh
# Starts Alertmanager with the webhook URLs read from files (compose secrets). alertmanager.yml
# holds placeholder URLs under the reserved .invalid domain; this writes a copy that only the
# server's user can read, with each placeholder replaced by the first line of its URL file, and
# execs alertmanager on the copy with the arguments it was given. (Alertmanager 0.26+ reads a
# webhook URL from a file itself, url_file; the config keeps to 0.25's fields.) A changed URL or
# config needs a restart of the container: a reload re-reads the copy, not the secrets.
#
#   AM_CONFIG           the config with the placeholders   (default /etc/alertmanager/alertmanager.yml)
#   AM_RENDERED_CONFIG  the copy with the URLs              (default /tmp/alertmanager.yml, a tmpfs in compose)
#   AM_PAGE_URL_FILE    the on-call receiver's webhook URL  (default /run/secrets/alertmanager_page_url)
#   AM_TICKET_URL_FILE  the ticket receiver's webhook URL   (default /run/secrets/alertmanager_ticket_url)
# The image's busybox has sh, head, tr, grep and awk; nothing else is used.
set -eu

config=${AM_CONFIG:-/etc/alertmanager/alertmanager.yml}
rendered=${AM_RENDERED_CONFIG:-/tmp/alertmanager.yml}
page_file=${AM_PAGE_URL_FILE:-/run/secrets/alertmanager_page_url}
ticket_file=${AM_TICKET_URL_FILE:-/run/secrets/alertmanager_ticket_url}
page_placeholder="http://fsrec-page-webhook.invalid/"
ticket_placeholder="http://fsrec-ticket-webhook.invalid/"

fail() {
    echo "alertmanager-entrypoint: $*" >&2
    exit 2
}

# the first line of a URL file (a trailing CR dropped): an http(s) URL that can sit in a
# double-quoted YAML string as it is (no space, quote or backslash: percent-encode those)
read_url() {
    [ -r "$1" ] || fail "cannot read the webhook URL file $1 (see docker/compose.yaml: secrets)"
    url=$(head -n 1 "$1" | tr -d '\r')
    case "$url" in
        http://?* | https://?*) ;;
        *) fail "$1: the webhook URL must start with http:// or https://" ;;
    esac
    case "$url" in
        *[[:space:]\"\\]*) fail "$1: the webhook URL has a space, a quote or a backslash (percent-encode it)" ;;
    esac
    if [ "$url" = "$page_placeholder" ] || [ "$url" = "$ticket_placeholder" ]; then
        fail "$1: still the placeholder URL"
    fi
    printf '%s' "$url"
}

page=$(read_url "$page_file")
ticket=$(read_url "$ticket_file")
for placeholder in "$page_placeholder" "$ticket_placeholder"; do
    grep -qF "$placeholder" "$config" || fail "$config has no $placeholder to replace"
done

# plain string replacement (index/substr: no regex, so & | . in a URL are copied as they are)
umask 077
rm -f "$rendered"
awk -v pp="$page_placeholder" -v page="$page" -v tp="$ticket_placeholder" -v ticket="$ticket" '
    function swap(s, from, to,    out, i) {
        out = ""
        while ((i = index(s, from)) > 0) {
            out = out substr(s, 1, i - 1) to
            s = substr(s, i + length(from))
        }
        return out s
    }
    { print swap(swap($0, pp, page), tp, ticket) }
' "$config" >"$rendered"

exec alertmanager "--config.file=$rendered" "$@"
