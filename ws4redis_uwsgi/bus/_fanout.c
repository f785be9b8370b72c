/*
 * The hub's loop over a channel's listeners, for the common case, in C.
 *
 * See fanout.py for why and for the rules. In short: for each listener this
 * loop does what RedisSubscriber.deliver -> Outbox.take_live ->
 * RawSocket.try_write do when a live message goes straight out (a plain
 * client, nothing waiting, the socket free and taking the whole frame), and
 * only that. Anything else it leaves untouched and hands to the listener's
 * own deliver(), so the Python methods stay the one definition of what
 * happens; this is a shortcut through their success path.
 *
 * The methods it copies are registered by fanout.py; a listener, outbox or
 * socket whose class overrides one of them takes the Python path. It goes
 * in two passes (decide for all, then write to all, then deliver() for the
 * rest): fanout.py says why.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <unistd.h>

enum { DELIVER, TAKE_LIVE, TRY_WRITE, N_METHODS };
static const char *method_names[N_METHODS] = {"deliver", "take_live", "try_write"};
static PyObject *registered[N_METHODS]; /* the Python functions copied here (owned), or NULL */
static PyObject *names[N_METHODS];      /* their names, interned */

/* Attribute and method names read or called here, interned once (RawSocket._keep_rest is called, not copied). */
static PyObject *s_keep_rest, *s_outbox, *s_socket, *s_inbox, *s_caught_up, *s_with_ids, *s_resumed, *s_positions, *s_closed,
    *s_busy, *s_pending, *s_fd, *s_origin, *s_uid, *s_channel, *s_order, *s_frame;

/* Whether obj's class still has the registered method `which` (not an override). */
static int
uses_registered(PyObject *obj, int which)
{
    PyObject *found = _PyType_Lookup(Py_TYPE(obj), names[which]); /* borrowed; CPython caches the lookup */
    return found != NULL && found == registered[which];
}

enum expect { IS_NONE, IS_FALSE, IS_TRUE };

/* Whether attribute `name` of obj is as expected: 1 yes, 0 no, -1 error. */
static int
attr_is(PyObject *obj, PyObject *name, enum expect expected)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    int yes;
    if (expected == IS_NONE) {
        yes = value == Py_None;
    } else {
        yes = PyObject_IsTrue(value);
        if (yes >= 0 && expected == IS_FALSE)
            yes = !yes;
    }
    Py_DECREF(value);
    return yes;
}

#define REQUIRE(condition)                                                                                             \
    do {                                                                                                               \
        int ok_ = (condition);                                                                                         \
        if (ok_ < 0)                                                                                                   \
            goto error;                                                                                                \
        if (!ok_)                                                                                                      \
            goto done;                                                                                                 \
    } while (0)

/* What the first pass found for one listener. */
enum verdict { BY_DELIVER = 0, HANDED_OUT, TO_WRITE };

typedef struct {
    enum verdict verdict;
    int fd;
    PyObject *sock;      /* TO_WRITE: the socket (a new reference) */
    PyObject *positions; /* TO_WRITE, a message with an id: the outbox's positions (a new reference) */
} Plan;

/*
 * The first pass, for one listener and a message from no websocket (origin
 * None) without a uid: whether the message is handed out already, goes to
 * the socket, or is for the listener's own deliver(). It changes nothing.
 * 0, or -1 on error.
 */
static int
decide(PyObject *listener, PyObject *message_channel, PyObject *order, Plan *plan)
{
    int result = 0;
    PyObject *outbox = NULL, *sock = NULL, *positions = NULL, *before = NULL, *fd_obj = NULL;

    REQUIRE(uses_registered(listener, DELIVER));
    if ((outbox = PyObject_GetAttr(listener, s_outbox)) == NULL)
        goto error;
    if ((sock = PyObject_GetAttr(listener, s_socket)) == NULL)
        goto error;
    REQUIRE(sock != Py_None && uses_registered(outbox, TAKE_LIVE) && uses_registered(sock, TRY_WRITE));
    /* Outbox.take_live's common cases: nothing waits, caught up, a plain client. */
    REQUIRE(attr_is(outbox, s_inbox, IS_NONE));
    REQUIRE(attr_is(outbox, s_caught_up, IS_TRUE));
    REQUIRE(attr_is(outbox, s_with_ids, IS_FALSE)); /* a resuming client's frame carries its own token */
    if (order != Py_None) {
        /* With an id: a channel that has a position, a websocket that did not resume. (Without one,
         * nothing holds the message back and nothing is recorded.) */
        REQUIRE(attr_is(outbox, s_resumed, IS_NONE));
        if ((positions = PyObject_GetAttr(outbox, s_positions)) == NULL)
            goto error;
        REQUIRE(PyDict_CheckExact(positions)); /* None until the websocket's first message with an id */
        before = PyDict_GetItemWithError(positions, message_channel);
        if (before == NULL && PyErr_Occurred())
            goto error;
        REQUIRE(before != NULL && before != Py_None);
        Py_INCREF(before);
        int handed_out = PyObject_RichCompareBool(order, before, Py_LE);
        if (handed_out < 0)
            goto error;
        if (handed_out) {
            plan->verdict = HANDED_OUT;
            goto done;
        }
    }
    /* RawSocket.try_write's conditions: open, no write of its own under way, nothing of a frame left over. */
    REQUIRE(attr_is(sock, s_closed, IS_FALSE));
    REQUIRE(attr_is(sock, s_busy, IS_FALSE));
    REQUIRE(attr_is(sock, s_pending, IS_FALSE));
    if ((fd_obj = PyObject_GetAttr(sock, s_fd)) == NULL)
        goto error;
    long fd = PyLong_AsLong(fd_obj);
    if (fd == -1 && PyErr_Occurred())
        goto error;
    REQUIRE(fd >= 0 && fd <= INT_MAX);
    plan->verdict = TO_WRITE;
    plan->fd = (int)fd;
    plan->sock = sock;
    plan->positions = positions;
    sock = positions = NULL; /* the plan's now */
    goto done;
error:
    result = -1;
done:
    Py_XDECREF(fd_obj);
    Py_XDECREF(before);
    Py_XDECREF(positions);
    Py_XDECREF(sock);
    Py_XDECREF(outbox);
    return result;
}

/*
 * The second pass, for a listener whose frame goes to its socket: the write,
 * and what RawSocket.try_write and Outbox.take_live do after it. A write that
 * fails (would block, interrupted, broken) leaves the message to deliver().
 * 0, or -1 on error.
 */
static int
write_out(Plan *plan, PyObject *message_channel, PyObject *order, PyObject *frame)
{
    /* The socket is non-blocking: the write never waits, so the GIL stays held. */
    Py_ssize_t length = PyBytes_GET_SIZE(frame);
    Py_ssize_t written = write(plan->fd, PyBytes_AS_STRING(frame), (size_t)length);
    if (written < 0) {
        plan->verdict = BY_DELIVER; /* it tries again, then queues or closes */
        return 0;
    }
    if (order != Py_None && PyDict_SetItem(plan->positions, message_channel, order) < 0)
        return -1;
    if (written < length) {
        PyObject *written_obj = PyLong_FromSsize_t(written);
        if (written_obj == NULL)
            return -1;
        PyObject *kept = PyObject_CallMethodObjArgs(plan->sock, s_keep_rest, frame, written_obj, NULL);
        Py_DECREF(written_obj);
        if (kept == NULL)
            return -1;
        Py_DECREF(kept);
    }
    return 0;
}

/* The message's attributes the shortcut needs (new references), or 0 when it cannot take this message at all. */
static int
message_parts(PyObject *message, PyObject **channel, PyObject **order, PyObject **frame)
{
    int plain = 0;
    PyObject *origin = NULL, *uid = NULL;
    *channel = *order = *frame = NULL;
    if ((origin = PyObject_GetAttr(message, s_origin)) == NULL || (uid = PyObject_GetAttr(message, s_uid)) == NULL)
        goto error;
    /* From a websocket (the echo rule) or with a uid (the duplicate rule): deliver() decides. */
    if (origin != Py_None || uid != Py_None)
        goto done;
    if ((*channel = PyObject_GetAttr(message, s_channel)) == NULL || (*order = PyObject_GetAttr(message, s_order)) == NULL ||
        (*frame = PyObject_GetAttr(message, s_frame)) == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            goto error;
        PyErr_Clear(); /* an id that does not parse: deliver() meets the error where the Python loop would */
        goto done;
    }
    plain = PyBytes_CheckExact(*frame);
    goto done;
error:
    plain = -1;
done:
    Py_XDECREF(origin);
    Py_XDECREF(uid);
    if (plain != 1) {
        Py_CLEAR(*channel);
        Py_CLEAR(*order);
        Py_CLEAR(*frame);
    }
    return plain;
}

/* The Python function told of a deliver() that raised (fanout.delivery_failed), or NULL. */
static PyObject *failure_handler;

/* deliver() raised: an Exception goes to the failure handler, and the loop goes on (0);
 * anything else (GreenletExit, KeyboardInterrupt), or no handler, stays raised (-1). */
static int
report_failure(PyObject *listener, PyObject *message)
{
    if (failure_handler == NULL || !PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *args[3] = {listener, message, value};
    PyObject *returned = PyObject_Vectorcall(failure_handler, args, 3, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    if (returned != NULL) {
        Py_DECREF(returned);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyErr_WriteUnraisable(failure_handler);
    return 0;
}

PyDoc_STRVAR(deliver_all_doc, "deliver_all(listeners, message)\n--\n\n"
                              "Hand message to every listener of the tuple listeners (see fanout.py).");

static PyObject *
deliver_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "deliver_all(listeners: tuple, message)");
        return NULL;
    }
    PyObject *listeners = args[0], *message = args[1], *channel, *order, *frame;
    Py_ssize_t count = PyTuple_GET_SIZE(listeners);
    int plain = message_parts(message, &channel, &order, &frame), ok = 0;
    if (plain < 0)
        return NULL;
    Plan *plans = PyMem_Calloc(count ? count : 1, sizeof(Plan)); /* all BY_DELIVER */
    if (plans == NULL) {
        PyErr_NoMemory();
        goto end;
    }
    if (plain) {
        /* Two passes: every decision, then every write. The decisions read each websocket's
         * objects, which the kernel's writes push out of the CPU's caches: one after the other,
         * their reads overlap; between two writes, each waits for memory. No Python code runs
         * between the passes, so what the first found still holds in the second. */
        for (Py_ssize_t i = 0; i < count; i++) {
            if (decide(PyTuple_GET_ITEM(listeners, i), channel, order, &plans[i]) < 0)
                goto end;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            if (plans[i].verdict == TO_WRITE && write_out(&plans[i], channel, order, frame) < 0)
                goto end;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (plans[i].verdict == BY_DELIVER) {
            PyObject *listener = PyTuple_GET_ITEM(listeners, i);
            PyObject *returned = PyObject_CallMethodOneArg(listener, names[DELIVER], message);
            if (returned != NULL)
                Py_DECREF(returned);
            else if (report_failure(listener, message) < 0)
                goto end;
        }
    }
    ok = 1;
end:
    if (plans != NULL) {
        for (Py_ssize_t i = 0; i < count; i++) {
            Py_XDECREF(plans[i].sock);
            Py_XDECREF(plans[i].positions);
        }
        PyMem_Free(plans);
    }
    Py_XDECREF(channel);
    Py_XDECREF(order);
    Py_XDECREF(frame);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(register_doc, "register(name, function)\n--\n\n"
                           "The Python method the shortcut copies: deliver, take_live or try_write.");

static PyObject *
register_method(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "register(name: str, function)");
        return NULL;
    }
    for (int which = 0; which < N_METHODS; which++) {
        if (PyUnicode_Compare(args[0], names[which]) == 0) {
            Py_INCREF(args[1]);
            Py_XSETREF(registered[which], args[1]);
            Py_RETURN_NONE;
        }
    }
    if (PyErr_Occurred())
        return NULL;
    PyErr_Format(PyExc_ValueError, "not a method the shortcut copies: %R", args[0]);
    return NULL;
}

PyDoc_STRVAR(on_failure_doc, "on_failure(function)\n--\n\n"
                             "function(listener, message, error) is called when a listener's deliver raises an Exception.");

static PyObject *
on_failure(PyObject *module, PyObject *function)
{
    Py_INCREF(function);
    Py_XSETREF(failure_handler, function);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"on_failure", (PyCFunction)on_failure, METH_O, on_failure_doc},
    {"deliver_all", (PyCFunction)(void (*)(void))deliver_all, METH_FASTCALL, deliver_all_doc},
    {"register", (PyCFunction)(void (*)(void))register_method, METH_FASTCALL, register_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ws4redis_uwsgi.bus._fanout",
    .m_doc = "The hub's per-socket loop in C (see fanout.py).",
    .m_size = -1,
    .m_methods = methods,
};

#define INTERN(var, text)                                                                                              \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                                              \
    return NULL

PyMODINIT_FUNC
PyInit__fanout(void)
{
    for (int which = 0; which < N_METHODS; which++)
        INTERN(names[which], method_names[which]);
    INTERN(s_keep_rest, "_keep_rest");
    INTERN(s_outbox, "outbox");
    INTERN(s_socket, "_socket");
    INTERN(s_inbox, "_inbox");
    INTERN(s_caught_up, "_caught_up");
    INTERN(s_with_ids, "with_ids");
    INTERN(s_resumed, "_resumed");
    INTERN(s_positions, "_positions");
    INTERN(s_closed, "closed");
    INTERN(s_busy, "_busy");
    INTERN(s_pending, "_pending");
    INTERN(s_fd, "_fd");
    INTERN(s_origin, "origin");
    INTERN(s_uid, "uid");
    INTERN(s_channel, "channel");
    INTERN(s_order, "order");
    INTERN(s_frame, "frame");
    return PyModule_Create(&module_def);
}
