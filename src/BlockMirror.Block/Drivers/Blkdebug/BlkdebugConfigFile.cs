using System.Globalization;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Blkdebug;

/// <summary>
/// One rule as QEMU keeps it before it is checked (a QemuOpts of group <c>inject-error</c> or
/// <c>set-state</c>): what came from the config file and what came inline end up in the same lists, and the
/// event and iotype names are checked only when all of them are read, config file first.
/// </summary>
sealed record BlkdebugRuleText(bool IsSetState, string? Event, int State, string? IoType, int Errno, long Sector, bool Once, bool Immediately, int NewState)
{
    /// <summary>
    /// Checks the names and makes the rules, in QEMU's order (every inject-error, then every set-state), with
    /// QEMU's messages. The message names no file: QEMU's does not either.
    /// </summary>
    public static (List<BlkdebugInjectError> Injects, List<BlkdebugSetState> SetStates) Resolve(IEnumerable<BlkdebugRuleText> rules)
    {
        var injects = new List<BlkdebugInjectError>();
        var setStates = new List<BlkdebugSetState>();
        foreach (var rule in rules.OrderBy(r => r.IsSetState))
        {
            if (rule.Event is null)
            {
                throw new BlockOpenException("Missing event name for rule");
            }

            if (!BlkdebugEventNames.TryParse(rule.Event, out var e))
            {
                throw new BlockOpenException($"invalid parameter value: {rule.Event}");
            }

            if (rule.IsSetState)
            {
                setStates.Add(new BlkdebugSetState(e, rule.State, rule.NewState));
                continue;
            }

            var ioTypes = BlkdebugInjectError.DefaultIoTypes;
            if (rule.IoType is not null)
            {
                ioTypes = BlockOperationNames.TryParse(rule.IoType, out var operation) && BlkdebugInjectError.IsIoType(operation)
                    ? 1 << (int)operation
                    : throw new BlockOpenException($"invalid parameter value: {rule.IoType}");
            }

            // QEMU keeps the sector as given and multiplies; only -1 means "any request".
            injects.Add(new BlkdebugInjectError(e, rule.State, ioTypes, rule.Errno, rule.Sector == -1 ? -1 : rule.Sector * 512, rule.Once, rule.Immediately));
        }

        return (injects, setStates);
    }
}

/// <summary>
/// QEMU's blkdebug <c>config</c> file: the INI-like format of its <c>-readconfig</c>. Sections
/// <c>[inject-error]</c> and <c>[set-state]</c> (optionally with an id, <c>[inject-error "id"]</c>), lines
/// <c>key = "value"</c>, comments starting with <c>#</c> in the first column. Read as QEMU reads it: a
/// section's keys are checked when the next section starts or the file ends; a line of a word alone is the
/// word with an empty value; errors use QEMU's words (which name neither the file nor the line).
/// </summary>
static class BlkdebugConfigFile
{
    static readonly string[] InjectErrorKeys = ["event", "state", "iotype", "errno", "sector", "once", "immediately"];
    static readonly string[] SetStateKeys = ["event", "state", "new_state"];

    /// <summary>Reads the file's rules; throws <see cref="BlockOpenException"/> with QEMU's message.</summary>
    public static List<BlkdebugRuleText> Read(string path)
    {
        if (Directory.Exists(path))
        {
            // fopen succeeds on a directory; the first read fails.
            throw new BlockOpenException($"Cannot read config file: {BlockErrno.EISDIR.Describe()}");
        }

        string text;
        try
        {
            text = System.IO.File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            var errno = e switch
            {
                FileNotFoundException or DirectoryNotFoundException => BlockErrno.ENOENT,
                UnauthorizedAccessException => BlockErrno.EACCES,
                _ => BlockErrno.EIO,
            };
            throw new BlockOpenException($"Could not read blkdebug config file: {errno.Describe()}");
        }

        return Parse(text);
    }

    /// <summary>Parses the file's text (see the class comment).</summary>
    public static List<BlkdebugRuleText> Parse(string text)
    {
        var rules = new List<BlkdebugRuleText>();
        var ids = new HashSet<(string, string)>();
        string? group = null;
        string? id = null;
        List<(string Key, string Value)>? entries = null;
        var lines = text.Split('\n');
        // A final newline leaves an empty last piece that is no line.
        var count = text.EndsWith('\n') ? lines.Length - 1 : lines.Length;
        for (var n = 0; n < count; n++)
        {
            var line = lines[n];
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }

            if (line[0] == '[' && TryHeader(line, out var newGroup, out var newId))
            {
                if (entries is not null)
                {
                    rules.Add(Group(group!, id, entries, ids));
                }

                (group, id, entries) = (newGroup, newId, []);
                continue;
            }

            if (!TryEntry(line, out var key, out var value))
            {
                throw new BlockOpenException("parse error");
            }

            if (entries is null)
            {
                throw new BlockOpenException("no group defined");
            }

            entries.RemoveAll(entry => entry.Key == key);
            entries.Add((key, value));
        }

        if (entries is not null)
        {
            rules.Add(Group(group!, id, entries, ids));
        }

        return rules;
    }

    /// <summary>
    /// <c>[group "id"]</c>, else <c>[group]</c> (the closing bracket optional, as QEMU's scanf reads it).
    /// </summary>
    static bool TryHeader(string line, out string group, out string? id)
    {
        id = null;
        var body = line[1..];
        var wordEnd = 0;
        while (wordEnd < body.Length && !char.IsWhiteSpace(body[wordEnd]))
        {
            wordEnd++;
        }

        var rest = body[wordEnd..].TrimStart();
        if (wordEnd > 0 && rest.Length > 1 && rest[0] == '"' && rest[1] != '"')
        {
            var quote = rest.IndexOf('"', 1);
            (group, id) = (body[..wordEnd], quote > 0 ? rest[1..quote] : rest[1..]);
            return true;
        }

        var close = body.IndexOf(']');
        group = close < 0 ? body : body[..close];
        return group.Length > 0;
    }

    /// <summary><c>key = "value"</c>; a key with anything else after it has an empty value, as QEMU's scanf reads it.</summary>
    static bool TryEntry(string line, out string key, out string value)
    {
        value = "";
        var start = 0;
        while (start < line.Length && char.IsWhiteSpace(line[start]))
        {
            start++;
        }

        var end = start;
        while (end < line.Length && !char.IsWhiteSpace(line[end]))
        {
            end++;
        }

        key = line[start..end];
        if (key.Length == 0)
        {
            return false;
        }

        var rest = line[end..].TrimStart();
        if (rest.StartsWith('='))
        {
            rest = rest[1..].TrimStart();
            if (rest.StartsWith('"'))
            {
                var quote = rest.IndexOf('"', 1);
                value = quote > 0 ? rest[1..quote] : rest[1..].TrimEnd('\r');
            }
        }

        return true;
    }

    /// <summary>One section's keys checked and converted (QEMU's qemu_opts_from_qdict).</summary>
    static BlkdebugRuleText Group(string group, string? id, List<(string Key, string Value)> entries, HashSet<(string, string)> ids)
    {
        var setState = group switch
        {
            "inject-error" => false,
            "set-state" => true,
            _ => throw new BlockOpenException($"There is no option group '{group}'"),
        };
        if (id is not null && !ids.Add((group, id)))
        {
            throw new BlockOpenException($"Duplicate ID '{id}' for {group}");
        }

        var keys = setState ? SetStateKeys : InjectErrorKeys;
        var rule = new BlkdebugRuleText(setState, null, 0, null, (int)BlockErrno.EIO, -1, false, false, 0);
        foreach (var (key, value) in entries)
        {
            rule = key switch
            {
                _ when !keys.Contains(key) => throw new BlockOpenException($"Invalid parameter '{key}'"),
                "event" => rule with { Event = value },
                "iotype" => rule with { IoType = value },
                "state" => rule with { State = (int)Number(key, value) },
                "new_state" => rule with { NewState = (int)Number(key, value) },
                "errno" => rule with { Errno = (int)Number(key, value) },
                "sector" => rule with { Sector = Number(key, value) },
                "once" => rule with { Once = Bool(key, value) },
                _ => rule with { Immediately = Bool(key, value) },
            };
        }

        return rule;
    }

    /// <summary>QEMU_OPT_NUMBER: strtoull with base 0 (0x.. hex, 0.. octal), a minus sign wrapping around.</summary>
    static long Number(string key, string value)
    {
        var text = value.TrimStart();
        var negative = text.StartsWith('-');
        if (negative || text.StartsWith('+'))
        {
            text = text[1..];
        }

        var (digits, radix) = text switch
        {
            ['0', 'x' or 'X', .. var hex] => (hex, 16),
            ['0', _, ..] => (text[1..], 8),
            _ => (text, 10),
        };
        if (digits.Length == 0 || !digits.All(c => Uri.IsHexDigit(c) && Uri.FromHex(c) < radix))
        {
            throw new BlockOpenException($"Parameter '{key}' expects a number");
        }

        ulong number = 0;
        foreach (var c in digits)
        {
            var digit = (ulong)Uri.FromHex(c);
            if (number > (ulong.MaxValue - digit) / (ulong)radix)
            {
                throw new BlockOpenException($"Value '{value}' is too large for parameter '{key}'");
            }

            number = number * (ulong)radix + digit;
        }

        return negative ? unchecked(-(long)number) : unchecked((long)number);
    }

    /// <summary>QEMU_OPT_BOOL, as qapi_bool_parse reads it.</summary>
    static bool Bool(string key, string value) => value switch
    {
        "on" or "yes" or "true" or "y" => true,
        "off" or "no" or "false" or "n" => false,
        _ => throw new BlockOpenException($"Parameter '{key}' expects 'on' or 'off'"),
    };
}
