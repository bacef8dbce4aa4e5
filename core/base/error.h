/* Error convention for all of capstan: 0 on success, a negative errno value
 * on failure (libuv's style: UV_E* are negative errnos on Unix). LMDB,
 * BoringSSL and errno codes are mapped to these once, at the boundary. */
#ifndef CAPSTAN_CORE_BASE_ERROR_H
#define CAPSTAN_CORE_BASE_ERROR_H

#include <errno.h>

/* Common meanings, so call sites read as intent. */
#define CAPSTAN_OK 0
#define CAPSTAN_ENOMEM (-ENOMEM)       /* allocation failed */
#define CAPSTAN_EINVAL (-EINVAL)       /* bad argument or malformed input */
#define CAPSTAN_ENOENT (-ENOENT)       /* no such record / file */
#define CAPSTAN_EEXIST (-EEXIST)       /* record already exists */
#define CAPSTAN_EIO (-EIO)             /* storage or system I/O failed */
#define CAPSTAN_EPROTO (-EPROTO)       /* peer broke the protocol */
#define CAPSTAN_EACCES (-EACCES)       /* authentication / trust refused */
#define CAPSTAN_ETIMEDOUT (-ETIMEDOUT) /* a timer ran out */
#define CAPSTAN_EBUSY (-EBUSY)         /* a limit is reached; try later */
#define CAPSTAN_ERANGE (-ERANGE)       /* value out of its allowed range */
#define CAPSTAN_ECRYPTO (-EBADMSG)     /* a cryptographic operation failed */
#define CAPSTAN_ENOSPC (-ENOSPC)       /* store is full */

/* capstan_strerror returns a static, human-readable string for |err|. */
const char *capstan_strerror(int err);

#endif
