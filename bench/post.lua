-- wrk script: POST a new order on every request, priorities cycling 0..9.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0

request = function()
  counter = counter + 1
  local body = string.format('{"order_id":"wrk-%d","priority":%d,"items":["widget"]}', counter, counter % 10)
  return wrk.format(nil, "/orders", nil, body)
end
