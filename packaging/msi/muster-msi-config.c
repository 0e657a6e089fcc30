/*
 * muster-msi-config: the MSI's deferred custom action (runs as LocalSystem,
 * after InstallServices, before StartServices). wixl cannot write the
 * ServiceConfig/MsiServiceConfigFailureActions tables nor edit a TOML file,
 * so this small program does both:
 *
 *   muster-msi-config.exe --config C:\ProgramData\Muster\agent\agent.toml
 *       [--agency NAME] [--unit-id NAME] [--mqtt-url URL]
 *       [--enroll-url URL] [--enroll-token TOKEN] [--collector-key KEY]
 *       [--service NAME] [--secure-dir DIR] [--check-with MUSTER_AGENT_EXE]
 *
 * 1. Sets the top-level `agency` / `unit_id` keys, `[mqtt] url`,
 *    `[enroll] url` / `token` and `[trust] collector_keys` (one key) of the
 *    config to the values given (the MSI passes its AGENCY, UNIT_ID,
 *    MQTT_URL, ENROLL_URL, ENROLL_TOKEN and COLLECTOR_KEY properties; the
 *    enrolment token is never logged; an empty value leaves the key as it is, so an
 *    upgrade without properties keeps the installed config untouched). A
 *    commented-out key (`# unit_id = ...`) is replaced in place; a missing
 *    key is added. The file is rewritten through a temporary file and an
 *    atomic rename; with --check-with, `muster-agent.exe check-config` must
 *    accept the new file first, or the old one is left and the install fails.
 *    Every run appends what it did (and check-config's output, and why it
 *    failed) to msi-config.log next to the config: a type 18 custom action
 *    cannot write to the MSI log.
 * 2. Sets the service's recovery actions, the same as `muster-agent service
 *    install`: restart after 5 s, 30 s, then every 60 s; the failure count
 *    resets after a day; a non-zero exit counts as a failure (where the OS
 *    supports the flag: Wine does not).
 *
 * 3. With --secure-dir, gives DIR (C:\ProgramData\Muster\agent: the config,
 *    which may hold broker credentials, the buffer and the logs) a protected
 *    DACL: full control for SYSTEM and Administrators only, inherited by
 *    everything below (ProgramData lets every user read by default).
 *
 * Values with a quote, a backslash or a control character are refused (exit
 * 2): the installation then rolls back, and the msiexec log (/l*v) has this
 * program's message. Build: packaging/msi/build-msi.sh (mingw-w64).
 */
#ifndef UNICODE
#define UNICODE
#endif
#ifndef _UNICODE
#define _UNICODE
#endif
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#define MAX_LINES 4096

/* C:\ProgramData\Muster\agent\msi-config.log: what each install did, and
 * why it failed (a type 18 custom action cannot write to the MSI log). */
static HANDLE logh = INVALID_HANDLE_VALUE;

static void logmsg(const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "muster-msi-config: %s\n", buf);
    if (logh != INVALID_HANDLE_VALUE) {
        SYSTEMTIME t;
        GetSystemTime(&t);
        char line[2200];
        int n = snprintf(line, sizeof line, "%04u-%02u-%02uT%02u:%02u:%02uZ %s\r\n", t.wYear, t.wMonth,
                         t.wDay, t.wHour, t.wMinute, t.wSecond, buf);
        DWORD w;
        if (n > 0)
            WriteFile(logh, line, (DWORD)(n < (int)sizeof line ? n : (int)sizeof line - 1), &w, NULL);
    }
}

static void die(int code, const char *fmt, const char *arg)
{
    char buf[1024];
    snprintf(buf, sizeof buf, fmt, arg);
    logmsg("error: %s", buf);
    exit(code);
}

static char *utf8(const wchar_t *w);

/* die() with the Windows error code and message. */
static void die_win(const char *what, const wchar_t *name)
{
    DWORD e = GetLastError();
    wchar_t msg[512] = L"";
    FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, e, 0, msg, 512, NULL);
    logmsg("error: %s %s: error %lu: %s", what, name ? utf8(name) : "", (unsigned long)e, utf8(msg));
    exit(1);
}

/* Opens msi-config.log next to the config, inheritable (check-config's
 * output goes there too). */
static void open_log(const wchar_t *config)
{
    wchar_t path[MAX_PATH + 32];
    const wchar_t *slash = wcsrchr(config, L'\\');
    size_t n = slash ? (size_t)(slash - config + 1) : 0;
    if (n > MAX_PATH)
        return;
    wmemcpy(path, config, n);
    wcscpy(path + n, L"msi-config.log");
    SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
    logh = CreateFileW(path, FILE_APPEND_DATA, FILE_SHARE_READ, &sa, OPEN_ALWAYS,
                       FILE_ATTRIBUTE_NORMAL, NULL);
}

/* Runs `EXE check-config --config CONFIG`, output into the log; its exit code. */
static DWORD run_check(const wchar_t *exe, const wchar_t *config)
{
    size_t n = wcslen(exe) + wcslen(config) + 64;
    wchar_t *cmd = malloc(n * sizeof(wchar_t));
    if (!cmd)
        die(1, "%s", "out of memory");
    _snwprintf(cmd, n, L"\"%ls\" check-config --config \"%ls\"", exe, config);
    STARTUPINFOW si = {0};
    si.cb = sizeof si;
    if (logh != INVALID_HANDLE_VALUE) {
        si.dwFlags = STARTF_USESTDHANDLES;
        si.hStdInput = GetStdHandle(STD_INPUT_HANDLE);
        si.hStdOutput = logh;
        si.hStdError = logh;
    }
    PROCESS_INFORMATION pi;
    if (!CreateProcessW(NULL, cmd, NULL, NULL, TRUE, CREATE_NO_WINDOW, NULL, NULL, &si, &pi))
        die_win("cannot run", exe);
    DWORD code = 1;
    if (WaitForSingleObject(pi.hProcess, 60000) != WAIT_OBJECT_0) {
        TerminateProcess(pi.hProcess, 1);
        logmsg("error: check-config did not finish within 60 s");
    } else {
        GetExitCodeProcess(pi.hProcess, &code);
    }
    CloseHandle(pi.hProcess);
    CloseHandle(pi.hThread);
    free(cmd);
    return code;
}

static char *utf8(const wchar_t *w)
{
    int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
    char *s = malloc(n > 0 ? n : 1);
    if (!s)
        die(1, "%s", "out of memory");
    if (n <= 0) {
        s[0] = 0;
        return s;
    }
    WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL);
    return s;
}

/* A TOML basic string needs no escaping for what we accept. */
static void check_value(const char *key, const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p == '"' || *p == '\\' || *p < 0x20 || *p == 0x7f)
            die(2, "%s: the value may not contain quotes, backslashes or control characters", key);
}

/* Does `line` set `key` (commented out with '#' when `commented`)? */
static int sets_key(const char *line, const char *key, int commented)
{
    const char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    if ((*p == '#') != (commented != 0))
        return 0;
    if (commented) {
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
    }
    size_t n = strlen(key);
    if (strncmp(p, key, n) != 0)
        return 0;
    p += n;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '=';
}

/* "[mqtt]" -> "mqtt"; NULL when the line is not a table header. */
static int table_header(const char *line, char *name, size_t cap)
{
    const char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p != '[')
        return 0;
    p++;
    int array = *p == '[';
    if (array)
        p++;
    size_t i = 0;
    while (*p && *p != ']' && i + 1 < cap)
        name[i++] = *p++;
    name[i] = 0;
    if (array && i + 3 < cap) { /* [[probe]] -> "[probe]": never "mqtt" */
        memmove(name + 1, name, i);
        name[0] = '[';
        name[i + 1] = ']';
        name[i + 2] = 0;
    }
    return 1;
}

static char *lines[MAX_LINES];
static int nlines;

static void insert_line(int at, char *text)
{
    if (nlines >= MAX_LINES)
        die(1, "%s", "config has too many lines");
    memmove(&lines[at + 1], &lines[at], (size_t)(nlines - at) * sizeof(char *));
    lines[at] = text;
    nlines++;
}

/* `key = "value"`, or `key = ["value"]` when `array`. */
static int as_array;

static char *assignment(const char *key, const char *value)
{
    size_t n = strlen(key) + strlen(value) + 10;
    char *s = malloc(n);
    if (!s)
        die(1, "%s", "out of memory");
    snprintf(s, n, as_array ? "%s = [\"%s\"]\n" : "%s = \"%s\"\n", key, value);
    return s;
}

/* Sets `key` in `table` ("" = top level): replaces its assignment, else a
 * commented-out example of it, else adds it. */
static void set_key(const char *table, const char *key, const char *value)
{
    int table_start = *table ? -1 : 0;
    for (int commented = 0; commented < 2; commented++) {
        char current[256] = "";
        for (int i = 0; i < nlines; i++) {
            char name[256];
            if (table_header(lines[i], name, sizeof name)) {
                snprintf(current, sizeof current, "%s", name);
                if (strcmp(current, table) == 0 && table_start < 0)
                    table_start = i + 1;
                continue;
            }
            if (strcmp(current, table) == 0 && sets_key(lines[i], key, commented)) {
                lines[i] = assignment(key, value);
                return;
            }
        }
    }
    if (table_start < 0) {
        /* No such table: append it (a blank line, then its header on a
         * line of its own, so the next key of this table finds it). */
        size_t n = strlen(table) + 4;
        char *h = malloc(n);
        if (!h)
            die(1, "%s", "out of memory");
        snprintf(h, n, "[%s]\n", table);
        insert_line(nlines, _strdup("\n"));
        insert_line(nlines, h);
        insert_line(nlines, assignment(key, value));
        return;
    }
    if (!*table) {
        /* Top level: before the first table, after the leading comments. */
        int at = 0;
        while (at < nlines && (lines[at][0] == '#' || lines[at][0] == '\n' || lines[at][0] == '\r'))
            at++;
        insert_line(at, assignment(key, value));
        return;
    }
    insert_line(table_start, assignment(key, value));
}

struct values {
    const char *agency, *unit, *url, *enroll_url, *enroll_token, *collector_key;
};

static int any_value(const struct values *v)
{
    return *v->agency || *v->unit || *v->url || *v->enroll_url || *v->enroll_token ||
           *v->collector_key;
}

static void edit_config(const wchar_t *path, const struct values *v, const wchar_t *check_exe)
{
    FILE *f = _wfopen(path, L"rb");
    if (!f)
        die(1, "cannot open %s", utf8(path));
    char buf[8192];
    while (fgets(buf, sizeof buf, f)) {
        if (nlines >= MAX_LINES)
            die(1, "%s", "config has too many lines");
        lines[nlines++] = _strdup(buf);
    }
    fclose(f);
    if (nlines > 0 && lines[nlines - 1][strlen(lines[nlines - 1]) - 1] != '\n') {
        size_t n = strlen(lines[nlines - 1]);
        char *s = malloc(n + 2);
        memcpy(s, lines[nlines - 1], n);
        s[n] = '\n';
        s[n + 1] = 0;
        lines[nlines - 1] = s;
    }
    if (*v->agency)
        set_key("", "agency", v->agency);
    if (*v->unit)
        set_key("", "unit_id", v->unit);
    if (*v->url)
        set_key("mqtt", "url", v->url);
    if (*v->enroll_url)
        set_key("enroll", "url", v->enroll_url);
    if (*v->enroll_token)
        set_key("enroll", "token", v->enroll_token);
    if (*v->collector_key) {
        as_array = 1;
        set_key("trust", "collector_keys", v->collector_key);
        as_array = 0;
    }

    wchar_t tmp[MAX_PATH + 8];
    if (_snwprintf(tmp, MAX_PATH + 8, L"%ls.new", path) < 0)
        die(1, "%s", "path too long");
    FILE *o = _wfopen(tmp, L"wb");
    if (!o)
        die(1, "cannot write %s", utf8(tmp));
    for (int i = 0; i < nlines; i++)
        if (fputs(lines[i], o) < 0)
            die(1, "cannot write %s", utf8(tmp));
    if (fflush(o) != 0 || fclose(o) != 0)
        die(1, "cannot write %s", utf8(tmp));
    if (check_exe && *check_exe) {
        DWORD code = run_check(check_exe, tmp);
        if (code != 0) {
            DeleteFileW(tmp);
            die(1, "%s", "the config with these property values is invalid (check-config output "
                         "above); the installed config is unchanged and the installation rolls back");
        }
    }
    if (!MoveFileExW(tmp, path, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH))
        die(1, "cannot replace %s", utf8(path));
}

static void set_recovery(const wchar_t *name)
{
    SC_HANDLE scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT);
    if (!scm)
        die_win("cannot connect to the service control manager", NULL);
    SC_HANDLE svc = OpenServiceW(scm, name, SERVICE_CHANGE_CONFIG | SERVICE_START);
    if (!svc)
        die_win("cannot open service", name);
    SC_ACTION actions[3] = {
        {SC_ACTION_RESTART, 5000},
        {SC_ACTION_RESTART, 30000},
        {SC_ACTION_RESTART, 60000},
    };
    SERVICE_FAILURE_ACTIONSW fa = {0};
    fa.dwResetPeriod = 24 * 3600;
    fa.cActions = 3;
    fa.lpsaActions = actions;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS, &fa))
        die_win("cannot set the recovery actions of", name);
    SERVICE_FAILURE_ACTIONS_FLAG flag = {TRUE};
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, &flag))
        fprintf(stderr, "muster-msi-config: warning: recovery on non-crash failures not supported here; "
                        "recovery applies to crashes only\n");
    CloseServiceHandle(svc);
    CloseServiceHandle(scm);
}

static void secure_dir(const wchar_t *dir)
{
    PSECURITY_DESCRIPTOR sd = NULL;
    BOOL present = FALSE, defaulted = FALSE;
    PACL dacl = NULL;
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(
            L"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)", SDDL_REVISION_1, &sd, NULL) ||
        !GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted))
        die(1, "%s", "cannot build the security descriptor");
    DWORD rc = SetNamedSecurityInfoW((LPWSTR)dir, SE_FILE_OBJECT,
                                     DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                                     NULL, NULL, dacl, NULL);
    LocalFree(sd);
    if (rc != ERROR_SUCCESS)
        die(1, "cannot restrict access to %s", utf8(dir));
}

int wmain(int argc, wchar_t **argv)
{
    const wchar_t *config = NULL, *service = NULL, *dir = NULL, *check = NULL;
    struct values v = {"", "", "", "", "", ""};
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            die(2, "%s needs a value", utf8(argv[i]));
        if (wcscmp(argv[i], L"--config") == 0)
            config = argv[++i];
        else if (wcscmp(argv[i], L"--agency") == 0)
            v.agency = utf8(argv[++i]);
        else if (wcscmp(argv[i], L"--unit-id") == 0)
            v.unit = utf8(argv[++i]);
        else if (wcscmp(argv[i], L"--mqtt-url") == 0)
            v.url = utf8(argv[++i]);
        else if (wcscmp(argv[i], L"--enroll-url") == 0)
            v.enroll_url = utf8(argv[++i]);
        else if (wcscmp(argv[i], L"--enroll-token") == 0)
            v.enroll_token = utf8(argv[++i]);
        else if (wcscmp(argv[i], L"--collector-key") == 0)
            v.collector_key = utf8(argv[++i]);
        else if (wcscmp(argv[i], L"--service") == 0)
            service = argv[++i];
        else if (wcscmp(argv[i], L"--secure-dir") == 0)
            dir = argv[++i];
        else if (wcscmp(argv[i], L"--check-with") == 0)
            check = argv[++i];
        else
            die(2, "unknown argument %s", utf8(argv[i]));
    }
    if (config)
        open_log(config);
    logmsg("install: agency=\"%s\" unit_id=\"%s\" mqtt_url=\"%s\" enroll_url=\"%s\" enroll_token=%s "
           "collector_key=\"%s\"%s",
           v.agency, v.unit, v.url, v.enroll_url, *v.enroll_token ? "(set)" : "(none)", v.collector_key,
           any_value(&v) ? "" : " (no values: the config is left as it is)");
    check_value("AGENCY", v.agency);
    check_value("UNIT_ID", v.unit);
    check_value("MQTT_URL", v.url);
    check_value("ENROLL_URL", v.enroll_url);
    check_value("ENROLL_TOKEN", v.enroll_token);
    check_value("COLLECTOR_KEY", v.collector_key);
    if (config && any_value(&v))
        edit_config(config, &v, check);
    if (dir && *dir)
        secure_dir(dir);
    if (service && *service)
        set_recovery(service);
    logmsg("%s", "done");
    return 0;
}
