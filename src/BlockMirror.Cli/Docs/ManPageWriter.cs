using System.CommandLine;
using System.Text;
using BlockMirror.Cli.Commands;

namespace BlockMirror.Cli.Docs;

/// <summary>
/// Man pages in roff (man(7) macros): <c>blockmirror(1)</c> with the list of commands, and one
/// <c>blockmirror-COMMAND(1)</c> per command with its arguments and options, from the definitions
/// <c>--help</c> prints. <c>serve</c> takes qemu-storage-daemon's options, which System.CommandLine does not
/// know: its page carries <see cref="ServeHelp.Text"/> and the service manager's variables.
/// </summary>
static class ManPageWriter
{
    /// <summary>The file name of a command's page: <c>blockmirror.1</c>, <c>blockmirror-mirror.1</c>.</summary>
    public static string FileName(Command command, RootCommand root) => command == root ? "blockmirror.1" : $"blockmirror-{command.Name}.1";

    public static string Page(Command command, RootCommand root, string version)
    {
        var page = new StringBuilder();
        var name = command == root ? "blockmirror" : $"blockmirror-{command.Name}";
        page.Append(CultureInvariant($".TH {name.ToUpperInvariant()} 1 \"\" \"blockmirror {version}\" \"User Commands\"\n"));
        page.Append(".SH NAME\n").Append(Escape(name)).Append(" \\- ").Append(Escape(command.Description ?? "")).Append('\n');

        page.Append(".SH SYNOPSIS\n");
        if (command == root)
        {
            page.Append(".B blockmirror\n\\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]\n");
        }
        else
        {
            page.Append(".B blockmirror ").Append(command.Name).Append("\n[\\fIOPTIONS\\fR]");
            foreach (var argument in command.Arguments.Where(a => !a.Hidden))
            {
                var shown = $"\\fI{Escape(argument.HelpName ?? argument.Name)}\\fR{(argument.Arity.MaximumNumberOfValues > 1 ? "..." : "")}";
                page.Append(' ').Append(argument.Arity.MinimumNumberOfValues == 0 ? $"[{shown}]" : shown);
            }

            page.Append('\n');
        }

        page.Append(".SH DESCRIPTION\n").Append(Escape(command.Description ?? "")).Append('\n');
        if (command == root)
        {
            page.Append(".SH COMMANDS\n");
            foreach (var sub in CommandTree.Visible(root))
            {
                page.Append(".TP\n\\fB").Append(Escape(sub.Name)).Append("\\fR\n").Append(Escape(sub.Description ?? ""))
                    .Append(" See \\fB").Append(Escape(FileName(sub, root)[..^2])).Append("\\fR(1).\n");
            }
        }

        if (command.Arguments.Any(a => !a.Hidden))
        {
            page.Append(".SH ARGUMENTS\n");
            foreach (var argument in command.Arguments.Where(a => !a.Hidden))
            {
                page.Append(".TP\n\\fI").Append(Escape(argument.HelpName ?? argument.Name)).Append("\\fR\n").Append(Escape(argument.Description ?? "")).Append('\n');
            }
        }

        page.Append(".SH OPTIONS\n");
        foreach (var option in CommandTree.Options(command, root))
        {
            var spellings = string.Join(", ", CommandTree.Spellings(option).Select(s => $"\\fB{Escape(s)}\\fR"));
            var value = CommandTree.TakesValue(option) ? $" \\fI{Escape(CommandTree.ValueName(option))}\\fR" : "";
            page.Append(".TP\n").Append(spellings).Append(value).Append('\n').Append(Escape(option.Description ?? "")).Append('\n');
        }

        if (command.Name == "serve")
        {
            AppendServe(page);
        }

        page.Append(".SH SEE ALSO\n");
        page.Append(string.Join(",\n", (command == root ? CommandTree.Visible(root) : [root])
            .Select(c => $"\\fB{Escape(FileName(c, root)[..^2])}\\fR(1)").Append("\\fBqemu\\-storage\\-daemon\\fR(1)"))).Append('\n');
        return page.ToString();
    }

    /// <summary>The daemon's own options (its <c>--help</c>, verbatim) and what it reads from a service manager.</summary>
    static void AppendServe(StringBuilder page)
    {
        page.Append(".SH DAEMON OPTIONS\n.nf\n");
        foreach (var line in ServeHelp.Text.Split('\n').SkipWhile(l => !l.TrimStart().StartsWith("--blockdev", StringComparison.Ordinal)))
        {
            page.Append(Escape(line)).Append('\n');
        }

        page.Append(".fi\n.SH ENVIRONMENT\n");
        (string Name, string Text)[] variables =
        [
            ("NOTIFY_SOCKET", "The service manager's notification socket (a path, or an abstract name starting with '@'). " +
                "serve sends READY=1 once every option is applied and the monitors and the NBD server accept clients, " +
                "and STOPPING=1 when it starts to shut down, so a Type=notify unit works."),
            ("LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES", "Socket activation: listening sockets from descriptor 3 on, for this process. " +
                "--chardev socket,id=ID,fd=NAME,server=on,wait=off and --nbd-server addr.type=fd,addr.str=NAME take one by " +
                "the name the socket unit gives it (FileDescriptorName=) or by number. The socket files stay the service manager's."),
        ];
        foreach (var (name, text) in variables)
        {
            page.Append(".TP\n\\fB").Append(Escape(name)).Append("\\fR\n").Append(Escape(text)).Append('\n');
        }
    }

    static string CultureInvariant(FormattableString text) => FormattableString.Invariant(text);

    /// <summary>Text as roff reads it literally: backslashes and minus signs escaped, no line taken for a request.</summary>
    static string Escape(string text)
    {
        var escaped = text.Replace("\\", "\\e", StringComparison.Ordinal).Replace("-", "\\-", StringComparison.Ordinal);
        return escaped.StartsWith('.') || escaped.StartsWith('\'') ? "\\&" + escaped : escaped;
    }
}
