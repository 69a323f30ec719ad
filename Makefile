# llmux build. Variable names follow LuaRocks so `luarocks make` can pass its own values.
LUA_VERSION ?= 5.4
LUA         ?= lua$(LUA_VERSION)
PKG_CONFIG  ?= pkg-config
PKGS        := lua$(LUA_VERSION) libcurl libpng
# Without pkg-config (no dependency of Debian's -dev packages; `luarocks make` needs none) the
# Debian paths: a module linked without -lcurl -lpng would build and then fail in require.
PC_INCDIR    = $(shell $(PKG_CONFIG) --variable=includedir lua$(LUA_VERSION) 2>/dev/null)
LUA_INCDIR  ?= $(or $(PC_INCDIR),/usr/include)/lua$(LUA_VERSION)
CC          ?= cc
CFLAGS      ?= -O2 -g
WARN        := -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes -Werror
DEPCFLAGS   := $(shell $(PKG_CONFIG) --cflags libcurl libpng 2>/dev/null)
PC_LIBS     := $(shell $(PKG_CONFIG) --libs libcurl libpng 2>/dev/null)
DEPLIBS     := $(or $(PC_LIBS),-lcurl -lpng) -lpthread -ldl
LIBFLAG     ?= -shared
PREFIX      ?= /usr/local
INST_LIBDIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
INST_LUADIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
BUILD       ?= build

SRCS := $(wildcard src/*.c)
OBJS := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS))
CORE := $(BUILD)/llmux/core.so
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden $(WARN) -I$(LUA_INCDIR) \
             $(DEPCFLAGS) $(CFLAGS)

# Debian packages the build, tests, demo and bench need.
DEB_PKGS := lua5.4 liblua5.4-dev lua-cjson libcurl4-openssl-dev libpng-dev pkg-config \
            lua-busted nginx-extras openssl make gcc luarocks python3-pil locales libcjson-dev
export LUA_PATH  := ./lua/?.lua;./tests/?.lua;;
export LUA_CPATH := ./$(BUILD)/?.so;;
BUSTED := busted --lua=$(LUA) -o tests/helpers/output.lua

.PHONY: all deps test pooltest demo bench asan fuzz install clean FORCE
all: $(CORE)

# The Lua headers the objects were compiled against: another LUA_INCDIR (`luarocks make` for
# another Lua version after a plain `make`) rebuilds them instead of installing them as they are.
LUA_STAMP := $(BUILD)/obj/lua_incdir
$(LUA_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(LUA_INCDIR)' | cmp -s - $@ || echo '$(LUA_INCDIR)' > $@
FORCE:

$(BUILD)/obj/%.o: src/%.c src/*.h $(LUA_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(CORE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(CFLAGS) $(LDFLAGS) -o $@ $(OBJS) $(DEPLIBS)

# Installs only what is missing, so a set-up machine pays one dpkg query.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The C unit tests (pooltest) run from tests/c_units_spec.lua, so their verdict is counted in
# the summary line like every other test's.
test: deps
	$(MAKE) all $(LOCALE)
	LOCPATH="$(abspath $(LOCALE_DIR))" $(BUSTED) tests

# A comma-decimal locale and one whose decimal point is two bytes (ps_AF: U+066B), so the JSON
# tests can check that LC_NUMERIC never leaks into numbers (glibc looks in LOCPATH when
# setlocale runs; nothing is installed system-wide).
LOCALE_DIR := build/locale
LOCALE := $(LOCALE_DIR)/de_DE.UTF-8 $(LOCALE_DIR)/ps_AF.UTF-8
$(LOCALE_DIR)/%.UTF-8:
	@mkdir -p $(LOCALE_DIR)
	localedef -i $* -f UTF-8 $@ || test -f $@/LC_NUMERIC

# The worker pool's C test and base64's first use from many threads, plain and under
# ThreadSanitizer (when the compiler has it).
POOLTEST := -g -O1 -std=c11 -D_GNU_SOURCE $(WARN) -Isrc tests/pool_test.c src/pool.c -lpthread -ldl
B64TEST  := -g -O1 -std=c11 -D_GNU_SOURCE $(WARN) -Isrc tests/b64_threads_test.c src/b64.c -lpthread
pooltest:
	@mkdir -p $(BUILD)/test
	$(CC) $(POOLTEST) -o $(BUILD)/test/pool_test && $(BUILD)/test/pool_test
	$(CC) $(B64TEST) -o $(BUILD)/test/b64_threads && $(BUILD)/test/b64_threads
	@if $(CC) -fsanitize=thread $(POOLTEST) -o $(BUILD)/test/pool_tsan 2>/dev/null; then \
	  $(BUILD)/test/pool_tsan && $(CC) -fsanitize=thread $(B64TEST) -o $(BUILD)/test/b64_tsan && \
	  $(BUILD)/test/b64_tsan; else echo "pooltest: no ThreadSanitizer, skipped"; fi

demo: deps
	$(MAKE) all
	$(LUA) tests/helpers/demo.lua

# The Python peer of the benches and valgrind for their instruction counts; only the bench
# wants them, so only the bench installs them (the floor's cJSON is in DEB_PKGS: a test runs
# the chat bench briefly).
BENCH_PKGS := python3-aiohttp python3-uvloop valgrind

bench: deps
	@missing=""; for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing || echo "bench: could not install$$missing"; \
	fi
	$(MAKE) all
	$(LUA) tests/bench/bench.lua
	$(LUA) tests/bench/stream_bench.lua
	@mkdir -p $(BUILD)/bench
	$(CC) -O2 -std=c11 -D_GNU_SOURCE $(WARN) -Isrc tests/bench/sse_bench.c src/sse.c src/buf.c \
	  -o $(BUILD)/bench/sse_bench
	$(BUILD)/bench/sse_bench
	$(LUA) tests/bench/image_bench.lua

# libasan is preloaded into the (uninstrumented) lua5.4. Leak checking stays off: at exit Lua
# unloads the module and with it libcurl, whose global state would then read as leaks.
asan: deps
	$(MAKE) BUILD=build-asan CC=gcc CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer" \
	  LDFLAGS="-fsanitize=address,undefined" all
	$(MAKE) $(LOCALE)
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  LUA_CPATH="./build-asan/?.so;;" LOCPATH="$(abspath $(LOCALE_DIR))" $(BUSTED) tests

# libFuzzer on the JSON decoder, the SSE parser and the PNG path, each bounded: FUZZ_TIME
# seconds (default 60). Corpora persist in $(BUILD)/fuzz, so later runs start where earlier
# ones ended.
FUZZ_TIME ?= 60
# PngSuite seeds the PNG fuzzer: beside the worktree, else /work/shared's (as tests find it)
PNGSUITE  ?= $(firstword $(wildcard ../shared/testdata/pngsuite /work/shared/testdata/pngsuite))
FUZZ_CC := clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=undefined -Isrc
fuzz: deps
	@command -v clang >/dev/null || (apt-get update -qq && apt-get install -y -qq clang libclang-rt-14-dev)
	@mkdir -p $(BUILD)/fuzz/json_corpus $(BUILD)/fuzz/sse_corpus
	$(FUZZ_CC) -I$(LUA_INCDIR) tests/fuzz/json_fuzz.c src/json.c src/json_encode.c src/buf.c -llua$(LUA_VERSION) \
	  -o $(BUILD)/fuzz/json_fuzz
	$(FUZZ_CC) tests/fuzz/sse_fuzz.c src/sse.c src/buf.c -o $(BUILD)/fuzz/sse_fuzz
	$(BUILD)/fuzz/json_fuzz -dict=tests/fuzz/json.dict -max_total_time=$(FUZZ_TIME) \
	  $(BUILD)/fuzz/json_corpus tests/fuzz/json_seeds
	$(BUILD)/fuzz/sse_fuzz -dict=tests/fuzz/sse.dict -max_total_time=$(FUZZ_TIME) \
	  $(BUILD)/fuzz/sse_corpus
	@mkdir -p $(BUILD)/fuzz/png_corpus
	$(FUZZ_CC) -DLMX_FUZZ $$($(PKG_CONFIG) --cflags libpng) tests/fuzz/png_fuzz.c src/image.c src/buf.c \
	  $$($(PKG_CONFIG) --libs libpng) -lm -o $(BUILD)/fuzz/png_fuzz
	$(BUILD)/fuzz/png_fuzz -max_total_time=$(FUZZ_TIME) -max_len=65536 \
	  -artifact_prefix=$(BUILD)/fuzz/ $(BUILD)/fuzz/png_corpus \
	  $(wildcard $(PNGSUITE))

install: $(CORE)
	install -d $(DESTDIR)$(INST_LIBDIR)/llmux $(DESTDIR)$(INST_LUADIR)/llmux
	install -m 755 $(CORE) $(DESTDIR)$(INST_LIBDIR)/llmux/core.so
	install -m 644 lua/llmux.lua $(DESTDIR)$(INST_LUADIR)/llmux.lua
	install -m 644 lua/llmux/*.lua $(DESTDIR)$(INST_LUADIR)/llmux/

clean:
	rm -rf build build-asan
