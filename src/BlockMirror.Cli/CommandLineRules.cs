using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using System.Reflection;
using System.Text.RegularExpressions;
using BlockMirror.Cli.Commands;
using BlockMirror.Qmp.Server;

namespace BlockMirror.Cli;

/// <summary>
/// qemu-img's command-line manners on top of System.CommandLine: a usage error is one line on stderr and a
/// pointer to <c>--help</c> (never the help itself), an argument that starts with '-' is an option, never a
/// file name (unless it follows <c>--</c>), and <c>-V</c>/<c>--version</c> work after every command.
/// </summary>
static partial class CommandLineRules
{
    /// <summary>Adds <c>-V, --version</c> to every command, in place of System.CommandLine's root-only <c>--version</c>.</summary>
    public static void AddVersionOption(RootCommand root)
    {
        foreach (var existing in root.Options.OfType<VersionOption>().ToList())
        {
            root.Options.Remove(existing);
        }

        root.Options.Add(new Option<bool>("--version", "-V")
        {
            Description = "Print the version and exit",
            Recursive = true,
            Action = new PrintVersion(),
        });
    }

    /// <summary>Runs the parsed command, or refuses a command line that does not follow the rules.</summary>
    public static async Task<int> InvokeAsync(ParseResult parse)
    {
        if (parse.Action is PrintVersion or HelpAction)
        {
            if (parse.Action is HelpAction && parse.CommandResult.Command.Name == "serve")
            {
                // qemu-storage-daemon's --help documents each option's syntax; System.CommandLine knows none of them.
                await Console.Out.WriteAsync(ServeHelp.Text);
                return 0;
            }

            return await parse.InvokeAsync(Invocation).ConfigureAwait(false);
        }

        // A mistyped option first: it is what shifted the arguments after it ("create --qiet x 1G": '1G' is one too many).
        if (FindStrayOption(parse) is { } stray)
        {
            return await RefuseAsync(parse, $"unrecognized option '{stray}'");
        }

        if (parse.Errors.Count > 0)
        {
            // An unknown token says more than what it left missing ("Required command was not provided").
            var error = parse.Errors.FirstOrDefault(e => e.Message.StartsWith(Unrecognized, StringComparison.Ordinal)) ?? parse.Errors[0];
            return await RefuseAsync(parse, Describe(parse, error));
        }

        return await parse.InvokeAsync(Invocation).ConfigureAwait(false);
    }

    /// <summary>
    /// No signal handling by System.CommandLine: by default it cancels the action's token on SIGINT/SIGTERM and
    /// ends the process itself two seconds later, whether or not a job is still being cancelled and its images
    /// closed. The commands that write images handle both signals themselves (<see cref="Interrupts"/>,
    /// <c>serve</c>) and take the time that needs; the others end by the signal, as qemu-img does.
    /// </summary>
    static readonly InvocationConfiguration Invocation = new() { ProcessTerminationTimeout = null };

    /// <summary>The version line, in qemu-img's <c>--version</c> form, and the copyright line.</summary>
    public static string VersionText
    {
        get
        {
            var version = typeof(CommandLineRules).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";
            var plus = version.IndexOf('+', StringComparison.Ordinal);
            var commit = plus < 0 ? "" : $", commit {version[(plus + 1)..Math.Min(version.Length, plus + 13)]}";
            return $"blockmirror version {(plus < 0 ? version : version[..plus])} (QEMU {QmpServer.Major}.{QmpServer.Minor} compatible{commit})\n" +
                "Copyright (c) 2026 the BlockMirror developers\n";
        }
    }

    /// <summary>
    /// One line on stderr, qemu-img's way (<c>blockmirror COMMAND: what is wrong</c>, then where to look), exit 1.
    /// </summary>
    static async Task<int> RefuseAsync(ParseResult parse, string message)
    {
        var path = CommandPath(parse);
        await Console.Error.WriteLineAsync($"{path}: {message}");
        await Console.Error.WriteLineAsync($"Try '{path} --help' for more information");
        return 1;
    }

    static string CommandPath(ParseResult parse) =>
        parse.CommandResult.Command is RootCommand ? "blockmirror" : $"blockmirror {parse.CommandResult.Command.Name}";

    const string Unrecognized = "Unrecognized command or argument '";

    /// <summary>System.CommandLine's error in getopt's and qemu-img's words where they differ.</summary>
    static string Describe(ParseResult parse, ParseError error)
    {
        var message = error.Message.TrimEnd('.');
        if (message.StartsWith(Unrecognized, StringComparison.Ordinal) && message.EndsWith('\''))
        {
            var token = message[Unrecognized.Length..^1];
            return LooksLikeOption(token) ? $"unrecognized option '{token}'" :
                parse.CommandResult.Command is RootCommand ? $"unknown command '{token}'" : $"unexpected argument '{token}'";
        }

        if (TypeError().Match(message) is { Success: true } typeError)
        {
            // Not .NET's type names: "Cannot parse argument 'x' for option '--count' as expected type 'System.Int32'".
            return $"option '{typeError.Groups[2].Value}' expects an integer, not '{typeError.Groups[1].Value}'";
        }

        return error.SymbolResult switch
        {
            OptionResult { Tokens.Count: 0 } option => $"option '{option.IdentifierToken?.Value ?? option.Option.Name}' requires an argument",
            ArgumentResult { Tokens.Count: 0 } argument => $"expecting {argument.Argument.Name}",
            CommandResult { Command: RootCommand } => "missing command",
            CommandResult command when command.Command.Arguments.FirstOrDefault(a => a.Arity.MinimumNumberOfValues > 0 && (parse.GetResult(a)?.Tokens.Count ?? 0) == 0) is { } missing
                => $"expecting {missing.Name}",
            _ => message,
        };
    }

    [GeneratedRegex(@"^Cannot parse argument '(.*)' for option '(.*)' as expected type 'System\.(U?Int\d+)'$")]
    private static partial Regex TypeError();

    /// <summary>
    /// An argument that System.CommandLine bound to a positional (a FILE, a SIZE) but that starts with '-' and
    /// came before any <c>--</c>: a mistyped option (<c>create --qiet 1G</c> made a file named <c>--qiet</c>).
    /// </summary>
    static string? FindStrayOption(ParseResult parse)
    {
        var tokens = parse.Tokens;
        var end = tokens.Count;
        for (var i = 0; i < tokens.Count; i++)
        {
            if (tokens[i].Type == TokenType.DoubleDash)
            {
                end = i;
                break;
            }
        }

        foreach (var argument in parse.CommandResult.Children.OfType<ArgumentResult>())
        {
            foreach (var token in argument.Tokens)
            {
                if (LooksLikeOption(token.Value) && IndexOf(tokens, token) < end)
                {
                    return token.Value;
                }
            }
        }

        return null;
    }

    static int IndexOf(IReadOnlyList<Token> tokens, Token token)
    {
        for (var i = 0; i < tokens.Count; i++)
        {
            if (ReferenceEquals(tokens[i], token))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>'-x' or '--xyz'; not '-' alone nor a negative size ('-1G', which <c>resize</c> takes as qemu-img does).</summary>
    static bool LooksLikeOption(string token) => token.Length > 1 && token[0] == '-' && !char.IsAsciiDigit(token[1]);

    /// <summary>Prints <see cref="VersionText"/>; other errors on the command line do not matter then, as with qemu-img.</summary>
    sealed class PrintVersion : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            Console.Out.Write(VersionText);
            return 0;
        }
    }
}
