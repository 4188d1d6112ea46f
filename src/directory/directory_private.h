/*
 * directory_private — the backend vtable behind directory.h. Only files in
 * src/directory/ include this. Each backend fills a struct dir_ops and embeds
 * struct directory as the first member of its own handle.
 */
#ifndef TERN_DIRECTORY_PRIVATE_H
#define TERN_DIRECTORY_PRIVATE_H

#include "directory/directory.h"

struct dir_ops {
    void (*close)(struct directory *dir);
    enum dir_status (*domain_add)(struct directory *, const char *name);
    enum dir_status (*domain_get)(struct directory *, const char *name, struct dir_domain *);
    enum dir_status (*domain_list)(struct directory *, struct dir_domain **, size_t *);
    enum dir_status (*user_add)(struct directory *, struct dir_user *);
    enum dir_status (*user_get)(struct directory *, const char *address, struct dir_user *);
    enum dir_status (*user_update)(struct directory *, struct dir_user *);
    enum dir_status (*user_delete)(struct directory *, const char *address, uint64_t version);
    enum dir_status (*user_list)(struct directory *, struct dir_user **, size_t *);
    enum dir_status (*alias_add)(struct directory *, const char *address, const char *target);
    enum dir_status (*alias_get)(struct directory *, const char *address, struct dir_alias *);
    enum dir_status (*alias_delete)(struct directory *, const char *address, uint64_t version);
    enum dir_status (*alias_list)(struct directory *, struct dir_alias **, size_t *);
    enum dir_status (*store_upsert)(struct directory *, const char *name, const char *lmtp);
    enum dir_status (*store_get)(struct directory *, const char *name, struct dir_store *);
    enum dir_status (*store_list)(struct directory *, struct dir_store **, size_t *);
    enum dir_status (*job_create)(struct directory *, struct dir_job *);
    enum dir_status (*job_get)(struct directory *, uint64_t id, struct dir_job *);
    enum dir_status (*job_update)(struct directory *, struct dir_job *);
    enum dir_status (*job_list)(struct directory *, struct dir_job **, size_t *);
    /* As job_create/job_update, and the job's data (NULL: unchanged) in the
     * same transaction. */
    enum dir_status (*job_create_data)(struct directory *, struct dir_job *, const void *data,
                                       size_t len);
    enum dir_status (*job_update_data)(struct directory *, struct dir_job *, const void *data,
                                       size_t len);
    enum dir_status (*job_data_get)(struct directory *, uint64_t id, struct buf *out);
    enum dir_status (*sub_set)(struct directory *, const char *user, const char *folder, bool on);
    enum dir_status (*sub_list)(struct directory *, const char *user,
                                void (*cb)(void *ctx, const char *folder), void *ctx);
};

struct directory {
    const struct dir_ops *ops;
};

#endif
