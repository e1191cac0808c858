using BlockMirror.Cli.Commands;

namespace BlockMirror.Cli.Logging;

/// <summary>
/// The <c>-T</c>/<c>--trace [[enable=]PATTERN][,events=FILE][,file=FILE]</c> options of qemu-storage-daemon,
/// over our event names (<see cref="LogEvents"/>). Each option is read as QEMU reads it (QemuOpts: <c>enable</c>
/// is the implied first key, a repeated key keeps its last value, <c>,,</c> is a comma in a value); its
/// <c>enable</c> pattern applies first, then the patterns of its events file (one per line, <c>#</c> comments),
/// in order across options, and a leading <c>-</c> turns the matching events off again. <c>help</c> lists the
/// events. A name that is no event is a warning, as in QEMU; a bad key or an unreadable file is an error.
/// </summary>
sealed class TraceSettings(TextWriter warnings)
{
    const string Program = "blockmirror serve";
    static readonly string[] Keys = ["enable", "events", "file"];

    readonly List<(string Pattern, bool Enable)> _rules = [];

    /// <summary>Where the log goes instead of stderr (the last <c>file=</c> given), or null.</summary>
    public string? File { get; private set; }

    /// <summary>The option that gave <see cref="File"/>, as spelled.</summary>
    public string? FileLocation { get; private set; }

    /// <summary>Set when a <c>help</c> pattern listed the events: the command ends there, successfully.</summary>
    public bool ListedEvents { get; private set; }

    /// <summary>Applies one option's value; <paramref name="location"/> is the option as spelled, for messages.</summary>
    public void Apply(string value, string location)
    {
        var options = Parse(value, location);
        if (options.TryGetValue("enable", out var enable))
        {
            Enable(enable, $"{Program}: {location}");
        }

        if (options.TryGetValue("events", out var events))
        {
            ReadEventsFile(events);
        }

        if (options.TryGetValue("file", out var file))
        {
            File = file;
            FileLocation = location;
        }
    }

    /// <summary>The names of the events the options turned on, in the end.</summary>
    public HashSet<string> EnabledEvents()
    {
        var enabled = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in LogEvents.All)
        {
            var on = false;
            foreach (var (pattern, enable) in _rules)
            {
                if (TracePattern.Matches(pattern, e.Name))
                {
                    on = enable;
                }
            }

            if (on)
            {
                enabled.Add(e.Name);
            }
        }

        return enabled;
    }

    /// <summary>QemuOpts' reading of <c>key=value,...</c> with <c>enable</c> implied for a first element without '='.</summary>
    Dictionary<string, string> Parse(string value, string location)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        var position = 0;
        var first = true;
        while (position < value.Length)
        {
            var nameEnd = value.IndexOfAny(['=', ','], position);
            string name, text;
            if (nameEnd < 0 || value[nameEnd] != '=')
            {
                if (first)
                {
                    name = "enable";
                    (text, position) = ReadValue(value, position);
                }
                else
                {
                    // A bare word is a short-form boolean (QEMU warns, then refuses the name below).
                    // (QEMU's warning names the word as written; "noX" is X=off.)
                    var end = nameEnd < 0 ? value.Length : nameEnd;
                    var word = value[position..end];
                    (name, text) = word.StartsWith("no", StringComparison.Ordinal) ? (word[2..], "off") : (word, "on");
                    warnings.WriteLine($"{Program}: {location}: warning: short-form boolean option '{word}' deprecated");
                    warnings.WriteLine($"Please use {name}={text} instead");
                    position = end < value.Length ? end + 1 : end;
                }
            }
            else
            {
                name = value[position..nameEnd];
                (text, position) = ReadValue(value, nameEnd + 1);
            }

            if (!Keys.Contains(name))
            {
                throw new UsageException($"{location}: Invalid parameter '{name}'");
            }

            options[name] = text;
            first = false;
        }

        return options;
    }

    /// <summary>A value up to the next lone ',' (<c>,,</c> is a comma); returns it and where the next element starts.</summary>
    static (string Value, int Next) ReadValue(string text, int start)
    {
        var value = new System.Text.StringBuilder();
        var i = start;
        for (; i < text.Length; i++)
        {
            if (text[i] == ',')
            {
                if (i + 1 < text.Length && text[i + 1] == ',')
                {
                    value.Append(',');
                    i++;
                    continue;
                }

                return (value.ToString(), i + 1);
            }

            value.Append(text[i]);
        }

        return (value.ToString(), i);
    }

    /// <summary>One pattern: <c>help</c> lists the events, <c>-PATTERN</c> turns off, anything else turns on.</summary>
    void Enable(string line, string where)
    {
        if (line is "help" or "?")
        {
            foreach (var e in LogEvents.All)
            {
                Console.Out.WriteLine(e.Name);
            }

            ListedEvents = true;
            return;
        }

        var enable = !line.StartsWith('-');
        var pattern = enable ? line : line[1..];
        _rules.Add((pattern, enable));
        if (!TracePattern.IsPattern(pattern) && !LogEvents.All.Any(e => TracePattern.Matches(pattern, e.Name)))
        {
            warnings.WriteLine($"{where}: warning: trace event '{pattern}' does not exist");
        }
    }

    /// <summary>An events file: one pattern per line; empty lines and lines starting with '#' are skipped.</summary>
    void ReadEventsFile(string path)
    {
        string[] lines;
        try
        {
            lines = System.IO.File.ReadAllLines(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"{path}: {Describe(ex)}");
        }

        for (var i = 0; i < lines.Length; i++)
        {
            if (lines[i].Length > 0 && lines[i][0] != '#')
            {
                // QEMU's location for a line of a file: no space after the program's name.
                Enable(lines[i], $"{Program}:{path}:{i + 1}");
            }
        }
    }

    /// <summary>strerror's words for the failures users meet opening a file.</summary>
    public static string Describe(Exception ex) => ex switch
    {
        FileNotFoundException or DirectoryNotFoundException => "No such file or directory",
        UnauthorizedAccessException => "Permission denied",
        _ => ex.Message,
    };
}
