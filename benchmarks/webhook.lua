-- wrk script for benchmarks/webhook.py: every request is a distinct, correctly signed plain-mode image push.
--
-- Each request gets a MsgId of its own and a nonce of its own (the service accepts one body per
-- signed (timestamp, nonce)), signed now: sha1 of the sorted token, timestamp and nonce, the
-- platform's rule (WECHAT.md §1), through OpenSSL's SHA1 (wrk links libcrypto; LuaJIT's FFI calls it).
-- Environment: BENCH_TOKEN, BENCH_MSG_ID_BASE (ids of this run start above it), BENCH_OPENIDS
-- (how many drivers the pushes come from, round robin).
-- At the end it prints one line, "BENCH_RESULT {json}": requests answered 200 "success", any other
-- answer, socket errors, the run's duration and latency quantiles (percent -> microseconds).

local ffi = require("ffi")
ffi.cdef [[unsigned char *SHA1(const unsigned char *d, size_t n, unsigned char *md);]]
local found, crypto = pcall(function() return ffi.C.SHA1 and ffi.C end)
if not found then
  crypto = ffi.load("crypto")
end

local token = assert(os.getenv("BENCH_TOKEN"), "BENCH_TOKEN not set")
local msg_id_base = assert(tonumber(os.getenv("BENCH_MSG_ID_BASE")), "BENCH_MSG_ID_BASE not set")
local openids = tonumber(os.getenv("BENCH_OPENIDS") or "10007")
local ids_per_thread = 1e8

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_no", thread_count)
  table.insert(threads, thread)
end

local digest = ffi.new("unsigned char[20]")

local function sha1_hex(text)
  crypto.SHA1(text, #text, digest)
  local hex = {}
  for i = 0, 19 do
    hex[i + 1] = string.format("%02x", digest[i])
  end
  return table.concat(hex)
end

local function signature(timestamp, nonce)
  local parts = { token, timestamp, nonce }
  table.sort(parts) -- byte order: the parts are ASCII, as Python's sorted() compares them
  return sha1_hex(table.concat(parts))
end

local body_format = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName>"
  .. "<FromUserName><![CDATA[%s]]></FromUserName><CreateTime>%s</CreateTime>"
  .. "<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://127.0.0.1/%s.jpg]]></PicUrl>"
  .. "<MediaId><![CDATA[m%s]]></MediaId><MsgId>%s</MsgId></xml>"
local headers = { ["Content-Type"] = "text/xml" }

function init(args)
  sent = 0
  answered = 0
  refused = 0
  first_refusal = ""
end

function request()
  sent = sent + 1
  local msg_id = string.format("%.0f", msg_id_base + thread_no * ids_per_thread + sent)
  local openid = string.format("oBench%05d", (thread_no * ids_per_thread + sent) % openids)
  local timestamp = tostring(os.time())
  local nonce = msg_id -- unique, so each signed query carries one body only
  local path = "/wechat?signature=" .. signature(timestamp, nonce) .. "&timestamp=" .. timestamp
    .. "&nonce=" .. nonce .. "&openid=" .. openid
  local body = string.format(body_format, openid, timestamp, msg_id, msg_id, msg_id)
  return wrk.format("POST", path, headers, body)
end

function response(status, response_headers, body)
  if status == 200 and body == "success" then
    answered = answered + 1
  else
    refused = refused + 1
    if first_refusal == "" then
      -- kept JSON-safe for the result line
      first_refusal = (status .. " " .. string.sub(body or "", 1, 200)):gsub("[^%w%s%.:/_-]", "?"):gsub("%s", " ")
    end
  end
end

function done(summary, latency, requests)
  local answered_total, refused_total, sent_total, refusal = 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    answered_total = answered_total + thread:get("answered")
    refused_total = refused_total + thread:get("refused")
    sent_total = sent_total + thread:get("sent")
    if refusal == "" then
      refusal = thread:get("first_refusal")
    end
  end
  -- The latency distribution as quantiles (wrk 4.1 gives no raw histogram to Lua): every 0.1 % up to
  -- 99 %, then every 0.01 %, so benchmarks/webhook.py can merge runs weighted by their answers.
  local quantiles = {}
  for tenth = 1, 990 do
    quantiles[#quantiles + 1] = string.format('"%.2f":%d', tenth / 10, latency:percentile(tenth / 10))
  end
  for hundredth = 9901, 10000 do
    quantiles[#quantiles + 1] = string.format('"%.2f":%d', hundredth / 100, latency:percentile(hundredth / 100))
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"answered":%d,"refused":%d,"sent":%d,"first_refusal":"%s","duration_us":%d,'
      .. '"socket_errors":%d,"latency_quantiles_us":{%s}}\n',
    answered_total, refused_total, sent_total, refusal, summary.duration,
    errors.connect + errors.read + errors.write + errors.timeout, table.concat(quantiles, ",")))
end
