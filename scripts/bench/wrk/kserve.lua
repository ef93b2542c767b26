-- POST /v2/models/MODEL/infer with one row of 32 features in the request.
local model = os.getenv("MODEL") or "xgboost_200x6"
local input = os.getenv("INPUT") or "input"
local bodies = {}

function init(args)
  math.randomseed(os.time())
  for b = 1, 64 do
    local vals = {}
    for f = 1, 32 do
      vals[f] = string.format("%.4f", math.random() * 4 - 2)
    end
    bodies[b] = '{"inputs":[{"name":"' .. input .. '","shape":[1,32],"datatype":"FP32","data":[' ..
      table.concat(vals, ",") .. ']}]}'
  end
end

request = function()
  return wrk.format("POST", "/v2/models/" .. model .. "/infer",
    {["Content-Type"] = "application/json"}, bodies[math.random(1, #bodies)])
end
