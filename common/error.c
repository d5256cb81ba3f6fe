#include "error.h"

#include <uv.h>

static const struct {
    int code;
    const char *msg;
} leo_errors[] = {
    {LEO_ETOOBIG, "size limit exceeded"},
    {LEO_EPARSE, "malformed input"},
    {LEO_ECONFIG, "invalid configuration"},
    {LEO_ENOTFOUND, "not found"},
    {LEO_ECONNECT, "connection failed"},
    {LEO_ETIMEOUT, "timed out"},
    {LEO_EUPSTREAM, "upstream protocol error"},
    {LEO_ECANCELED, "cancelled"},
    {LEO_EAUTH, "authentication failed"},
    {LEO_EINVAL, "invalid argument"},
    {LEO_EIO, "i/o error"},
    {LEO_ECLOSED, "closed"},
};

const char *leo_strerror(int err)
{
    if (err == 0)
        return "success";
    for (size_t i = 0; i < sizeof(leo_errors) / sizeof(leo_errors[0]); i++)
        if (leo_errors[i].code == err)
            return leo_errors[i].msg;
    if (err > LEO_E_BASE)
        return uv_strerror(err);
    return "unknown error";
}
