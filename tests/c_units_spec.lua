-- C unit tests that have no Lua in them (tests/pool_test.c: the worker pool;
-- tests/b64_threads_test.c: base64's first use from many threads at once; plain and under
-- ThreadSanitizer when the compiler has it), run through make so the summary counts them.
describe("C unit tests", function()
  it("pool_test passes", function()
    local p = io.popen("env -u LD_PRELOAD make -s pooltest 2>&1")   -- no ASan in TSan
    local out = p:read("a")
    local ok = p:close()
    assert.is_true(ok, out)
  end)
end)
