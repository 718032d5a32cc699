/*
 * The one piece of the fake that must be C: VDDK's log callbacks take a va_list, and
 * stable Rust can call a variadic C function but cannot create a va_list. Including our
 * own header also checks that the callback typedef is the one Ferry declares.
 */
#include <stdarg.h>
#include <stddef.h>
#include "vixDiskLib.h"

void fake_call_log(VixDiskLibGenericLogFunc *f, const char *fmt, ...)
{
  va_list ap;

  if (f == NULL || fmt == NULL)
    return;
  va_start(ap, fmt);
  f(fmt, ap);
  va_end(ap);
}
