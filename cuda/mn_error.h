// Error reporting shared by all three builds: one message per host thread, read back through
// mn_last_error(). Entry points check arguments with MN_REQUIRE: a bad one is a message, not a crash.
#pragma once
#include <cstdarg>
#include <cstdio>
#include <cstring>

inline thread_local char mn_error_buf[512];

inline int mn_fail(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(mn_error_buf, sizeof mn_error_buf, fmt, ap);
  va_end(ap);
  return code;
}

#define MN_ERR_INVALID_ARG 1
#define MN_ERR_OUT_OF_MEMORY 2
#define MN_REQUIRE(cond, ...)                                       \
  do {                                                              \
    if (!(cond)) return mn_fail(MN_ERR_INVALID_ARG, __VA_ARGS__);   \
  } while (0)

// Copies a C string into a caller's buffer (the ABI's way of returning strings).
inline int mn_copy_string(char* buf, int len, const char* s) {
  if (!buf || len <= 0) return mn_fail(MN_ERR_INVALID_ARG, "string buffer is NULL or empty");
  std::snprintf(buf, (size_t)len, "%s", s);
  return 0;
}
