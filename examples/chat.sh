#!/usr/bin/env bash
# Chat with a running `rapid-host serve` using curl: one plain answer, then a streamed one.
set -euo pipefail
base="${1:-http://127.0.0.1:8000/v1}"
curl -s "$base/chat/completions" -H 'content-type: application/json' -d '{
  "model": "default",
  "messages": [{"role": "user", "content": "What is the capital of France?"}],
  "max_tokens": 48, "temperature": 0
}'
echo
curl -sN "$base/chat/completions" -H 'content-type: application/json' -d '{
  "model": "default",
  "messages": [{"role": "user", "content": "Write a haiku about Rust."}],
  "max_tokens": 48, "stream": true, "stream_options": {"include_usage": true}
}'
