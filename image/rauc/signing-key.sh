#!/usr/bin/env bash
# The key that signs update bundles, and the keyring the speaker checks them against.
#   signing-key.sh OUT   -> prints KEY=, CERT=, KEYRING= (shell-readable)
# A release build passes its own: RESONATE_SIGNING_KEY, RESONATE_SIGNING_CERT and
# RESONATE_KEYRING (the CA certificate the image trusts). Without them a development key is
# made once in OUT/keys (kept across builds, so images and bundles built here trust each
# other); a speaker flashed with such an image accepts only bundles signed by that key.
set -euo pipefail
OUT="$1"
if [ -n "${RESONATE_SIGNING_KEY:-}" ]; then
    for v in RESONATE_SIGNING_KEY RESONATE_SIGNING_CERT RESONATE_KEYRING; do
        [ -s "${!v:-}" ] || { echo "signing-key: $v is not a readable file" >&2; exit 1; }
    done
    printf 'KEY=%q\nCERT=%q\nKEYRING=%q\n' "$RESONATE_SIGNING_KEY" "$RESONATE_SIGNING_CERT" "$RESONATE_KEYRING"
    exit 0
fi
KEYS="$OUT/keys"
if [ ! -s "$KEYS/development.cert.pem" ]; then
    # valid from 2000: a Pi has no clock battery and may check a bundle before network time
    mkdir -p "$KEYS"; chmod 700 "$KEYS"
    cat > "$KEYS/ca.cnf" <<CNF
[ca]
default_ca = dev
[dev]
database = $KEYS/index.txt
new_certs_dir = $KEYS
serial = $KEYS/serial
default_md = sha256
policy = anything
x509_extensions = ext
[anything]
organizationName = optional
commonName = supplied
[ext]
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, keyCertSign
subjectKeyIdentifier = hash
CNF
    : > "$KEYS/index.txt"; echo 01 > "$KEYS/serial"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$KEYS/development.key.pem" 2>/dev/null
    openssl req -new -key "$KEYS/development.key.pem" -out "$KEYS/development.csr" \
        -subj "/O=resonate-embedded/CN=development update key $(hostname)"
    openssl ca -batch -config "$KEYS/ca.cnf" -selfsign -keyfile "$KEYS/development.key.pem" \
        -in "$KEYS/development.csr" -out "$KEYS/development.cert.pem" -notext \
        -startdate 20000101000000Z -enddate 20991231235959Z >/dev/null 2>&1
    echo "signing-key: made a DEVELOPMENT update key in $KEYS (not for release images)" >&2
fi
printf 'KEY=%q\nCERT=%q\nKEYRING=%q\n' "$KEYS/development.key.pem" "$KEYS/development.cert.pem" "$KEYS/development.cert.pem"
