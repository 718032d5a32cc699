/*
 * Ferry's own declaration of the VixDiskLib (VDDK) C interface.
 *
 * Written from public facts only (../shared/reference/vddk.md: nbdkit's BSD-licensed
 * plugin, VMware's public documentation and Apache-2.0 Go wrapper). It is NOT VMware's
 * proprietary header, which must never be copied into this project. It declares the
 * subset a read-only importer needs, with the x86-64 Linux (LP64) layout.
 *
 * bindgen turns this file into src/bindings.rs (scripts/bindgen.sh); the generated
 * layout tests pin every struct size and field offset listed below.
 */
#ifndef FERRY_VIXDISKLIB_H
#define FERRY_VIXDISKLIB_H

#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>

typedef uint64_t VixError;          /* low 16 bits: the error code */
typedef char Bool;                  /* 1 byte */
typedef uint64_t VixDiskLibSectorType;

#define VIX_OK 0
#define VIX_ASYNC 25000             /* ReadAsync/WriteAsync: queued (success) */
#define VIX_ERROR_CODE_MASK 0xFFFF

#define VIXDISKLIB_SECTOR_SIZE 512

#define VIXDISKLIB_FLAG_OPEN_UNBUFFERED 1
#define VIXDISKLIB_FLAG_OPEN_SINGLE_LINK 2
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_ZLIB 16
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_FASTLZ 32
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_SKIPZ 64

#define VIXDISKLIB_MIN_CHUNK_SIZE 128             /* sectors (64 KiB) */
#define VIXDISKLIB_MAX_CHUNK_NUMBER (512 * 1024)  /* chunks per QueryAllocatedBlocks */

/* Opaque handles. */
typedef struct VixDiskLibConnectParamOpaque *VixDiskLibConnection;
typedef struct VixDiskLibHandleOpaque *VixDiskLibHandle;

/* Log callbacks: printf-style format and a va_list (not variadic). */
typedef void VixDiskLibGenericLogFunc(const char *fmt, va_list args);

/* Asynchronous I/O completion, run on a library thread. */
typedef void (*VixDiskLibCompletionCB)(void *cbData, VixError result);

typedef enum {
  VIXDISKLIB_CRED_UID = 1,
  VIXDISKLIB_CRED_SESSIONID = 2,
  VIXDISKLIB_CRED_TICKETID = 3,
  VIXDISKLIB_CRED_SSPI = 4,
  VIXDISKLIB_CRED_UNKNOWN = 256
} VixDiskLibCredType;

typedef enum {
  VIXDISKLIB_SPEC_VMX = 0,
  VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
  VIXDISKLIB_SPEC_UNKNOWN = 2
} VixDiskLibSpecType;

typedef enum {
  VIXDISKLIB_ADAPTER_IDE = 1,
  VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC = 2,
  VIXDISKLIB_ADAPTER_SCSI_LSILOGIC = 3,
  VIXDISKLIB_ADAPTER_UNKNOWN = 256
} VixDiskLibAdapterType;

typedef struct {
  char *userName;
  char *password;
} VixDiskLibUidPasswdCreds;

typedef struct {
  char *cookie;
  char *userName;
  char *key;
} VixDiskLibSessionIdCreds;

typedef struct {
  char *id;
  char *datastoreMoRef;
  char *ssId;
} VixDiskLibVStorageObjectSpec;

/*
 * Connection parameters, layout of VDDK 7.0 through 9.0 (128 bytes). Always obtain it
 * from VixDiskLib_AllocateConnectParams (6.7+) so the library owns the true size; only
 * this documented prefix is filled in.
 *   0 vmxSpec, 8 serverName, 16 thumbPrint, 24 reserved1 (long), 32 credType,
 *   40 creds (24), 64 port, 68 nfcHostPort, 72 reserved3, 80 reserved4[8],
 *   88 reserved5, 96 spec (24), 120 specType.
 */
typedef struct {
  char *vmxSpec;          /* "moref=vm-16" */
  char *serverName;
  char *thumbPrint;       /* "xx:xx:...": SHA-1 of the server certificate */
  long reserved1;
  VixDiskLibCredType credType;
  union {
    VixDiskLibUidPasswdCreds uid;
    VixDiskLibSessionIdCreds sessionId;
    void *reserved2;
  } creds;
  uint32_t port;          /* 0: 443 */
  uint32_t nfcHostPort;   /* 0: 902 */
  char *reserved3;
  char reserved4[8];
  void *reserved5;
  union {
    VixDiskLibVStorageObjectSpec vStorageObjSpec;
  } spec;
  VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

typedef struct {
  uint32_t cylinders;
  uint32_t heads;
  uint32_t sectors;
} VixDiskLibGeometry;

/* Disk information (64 bytes); the sector sizes exist from VDDK 7.0 only. */
typedef struct {
  VixDiskLibGeometry biosGeo;
  VixDiskLibGeometry physGeo;
  VixDiskLibSectorType capacity;   /* in sectors */
  VixDiskLibAdapterType adapterType;
  int numLinks;
  char *parentFileNameHint;
  char *uuid;
  uint32_t logicalSectorSize;
  uint32_t physicalSectorSize;
} VixDiskLibInfo;

typedef struct {
  VixDiskLibSectorType offset;     /* sectors */
  VixDiskLibSectorType length;     /* sectors */
} VixDiskLibBlock;

typedef struct {
  uint32_t numBlocks;
  VixDiskLibBlock blocks[];        /* at offset 8 */
} VixDiskLibBlockList;

/* Library lifetime. */
VixError VixDiskLib_InitEx(uint32_t majorVersion, uint32_t minorVersion,
                           VixDiskLibGenericLogFunc *log, VixDiskLibGenericLogFunc *warn,
                           VixDiskLibGenericLogFunc *panic, const char *libDir,
                           const char *configFile);
void VixDiskLib_Exit(void);
const char *VixDiskLib_ListTransportModes(void);

/* Connections. */
VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void);          /* 6.7 */
void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *params);       /* 6.7 */
VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *params, Bool readOnly,
                              const char *snapshotRef, const char *transportModes,
                              VixDiskLibConnection *connection);
VixError VixDiskLib_Disconnect(VixDiskLibConnection connection);
VixError VixDiskLib_Cleanup(const VixDiskLibConnectParams *params, uint32_t *numCleanedUp,
                            uint32_t *numRemaining);
VixError VixDiskLib_PrepareForAccess(const VixDiskLibConnectParams *params,
                                     const char *identity);
VixError VixDiskLib_EndAccess(const VixDiskLibConnectParams *params, const char *identity);

/* Disks. */
VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path,
                         uint32_t flags, VixDiskLibHandle *handle);
VixError VixDiskLib_Close(VixDiskLibHandle handle);
const char *VixDiskLib_GetTransportMode(VixDiskLibHandle handle);
VixError VixDiskLib_GetInfo(VixDiskLibHandle handle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);

/* I/O. */
VixError VixDiskLib_Read(VixDiskLibHandle handle, VixDiskLibSectorType startSector,
                         VixDiskLibSectorType numSectors, uint8_t *readBuffer);
VixError VixDiskLib_ReadAsync(VixDiskLibHandle handle, VixDiskLibSectorType startSector,
                              VixDiskLibSectorType numSectors, uint8_t *readBuffer,
                              VixDiskLibCompletionCB callback, void *cbData);   /* 6.7 */
VixError VixDiskLib_Wait(VixDiskLibHandle handle);                            /* 6.5 */
VixError VixDiskLib_Flush(VixDiskLibHandle handle);                           /* 6.0 */
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle handle,
                                         VixDiskLibSectorType startSector,
                                         VixDiskLibSectorType numSectors,
                                         VixDiskLibSectorType chunkSize,
                                         VixDiskLibBlockList **blockList);    /* 6.7 */
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);           /* 6.7 */

/* Errors. */
char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *errMsg);

#endif /* FERRY_VIXDISKLIB_H */
