-- 4 KiB downloads: GET the URL given on the command line (headers such as Authorization come from wrk -H).
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")
