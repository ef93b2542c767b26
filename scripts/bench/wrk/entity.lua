-- GET /v1/predict/user-NNNNNNNNN for ids drawn Zipf-like (log-uniform,
-- exponent ~1) from N entities; SUFFIX (env) is appended as the query.
local N = tonumber(os.getenv("ENTITIES") or "1000000")
local suffix = os.getenv("SUFFIX") or ""
local logn = math.log(N)

function init(args)
  math.randomseed(os.time() + (wrk.thread and tonumber(tostring(wrk.thread):match("0x(%x+)") or "0", 16) or 0))
end

request = function()
  local id = math.floor(math.exp(math.random() * logn)) - 1
  return wrk.format("GET", string.format("/v1/predict/user-%09d%s", id, suffix))
end
