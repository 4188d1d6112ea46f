/*
 * sync_private — what the files of the in-process transport share. Only
 * src/sync/ includes this.
 */
#ifndef TERN_SYNC_PRIVATE_H
#define TERN_SYNC_PRIVATE_H

#include "sync/sync.h"

struct store *sync_local_store(struct sync *s);
/* 0 / SYNC_NO with *why_r / -1, from a store status. */
int sync_local_status(enum store_status st, const char **why_r);
/* A store message row (with its folder row) as a sync_msg. */
void sync_local_msg_from_store(struct sync_msg *sm, const struct store_folder *f,
                               const struct store_msg *m);

int sync_local_modseq_raise(struct sync *s, const char *user, uint64_t modseq, const char **why_r);
int sync_local_folders(struct sync *s, const char *user, struct sync_folder **list_r, size_t *n_r,
                       const char **why_r);
int sync_local_msgs(struct sync *s, const char *user, const char *folder,
                    int (*cb)(void *ctx, const struct sync_msg *m), void *ctx, uint64_t *modseq_r,
                    const char **why_r);
int sync_local_append_new(struct sync *s, const char *user, const char *folder, uint32_t flags,
                          const char *keywords, int64_t internal_date, const void *data, size_t len,
                          uint32_t *uid_r, uint32_t *uidvalidity_r, const char **why_r);
int sync_local_flags_ex(struct sync *s, const char *user, const char *folder, uint32_t uid,
                        enum store_flag_mode mode, uint32_t flags, const char *keywords,
                        uint64_t unchanged_since, uint64_t *modseq_r, const char **why_r);
int sync_local_folder_create(struct sync *s, const char *user, const char *name,
                             const char **why_r);
int sync_local_folder_rename(struct sync *s, const char *user, const char *from, const char *to,
                             const char **why_r);

int sync_local_wait(struct sync *s, const char *user, uint64_t since, unsigned timeout_ms,
                    int wake_fd, struct store_mailbox *mb_r, const char **why_r);
int sync_local_expunge_uids(struct sync *s, const char *user, const char *folder,
                            const uint32_t *uids, size_t n, size_t *expunged_r, const char **why_r);
int sync_local_copy_uids(struct sync *s, const char *user, const char *from, const char *to,
                         const uint32_t *uids, size_t n, uint32_t *uids_out,
                         uint32_t *uidvalidity_r, const char **why_r);

#endif
