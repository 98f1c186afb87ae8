-- 4 KiB uploads, each to a new name.
--   BENCH_UPLOAD=post : POST /files?fileName=<name> (Handoff's raw-body upload; Authorization from wrk -H)
--   BENCH_UPLOAD=put  : PUT <url path><name> (nginx WebDAV, dufs)
-- Names are <BENCH_PREFIX><thread>-<counter>, so every request of every thread and round creates a new file.
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local mode = os.getenv("BENCH_UPLOAD") or "put"
local prefix = os.getenv("BENCH_PREFIX") or "f"
local body = string.rep("0123456789abcdef", 256) -- 4096 bytes
wrk.headers["Content-Type"] = "application/octet-stream"

local next_id = 1
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

local counter = 0
function request()
  counter = counter + 1
  local name = prefix .. id .. "-" .. counter
  if mode == "post" then
    return wrk.format("POST", "/files?fileName=" .. name, nil, body)
  end
  return wrk.format("PUT", wrk.path .. name, nil, body)
end
