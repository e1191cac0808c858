using System.CommandLine;

namespace BlockMirror.Cli.Docs;

/// <summary>
/// What the man pages and the completion script say about the command tree, read from the same
/// System.CommandLine definitions <c>--help</c> prints, so neither can drift from what is parsed.
/// </summary>
static class CommandTree
{
    /// <summary>The subcommands a user types (hidden ones, such as the generator itself, left out).</summary>
    public static IEnumerable<Command> Visible(Command command) => command.Subcommands.Where(c => !c.Hidden);

    /// <summary>The options <c>COMMAND --help</c> lists: its own and the recursive ones of its ancestors.</summary>
    public static IEnumerable<Option> Options(Command command, Command root)
    {
        var own = command.Options.Where(o => !o.Hidden).ToList();
        var inherited = command == root ? [] : root.Options.Where(o => o.Recursive && !o.Hidden && own.All(x => x.Name != o.Name));
        return own.Concat(inherited);
    }

    /// <summary>
    /// An option's spellings, long first: <c>--format, -f</c>. Help's DOS-style aliases (<c>/h</c>, <c>-?</c>)
    /// are left out: no Linux user types them, and a '?' would be a glob in the completion script.
    /// </summary>
    public static IEnumerable<string> Spellings(Option option) =>
        new[] { option.Name }.Concat(option.Aliases.OrderByDescending(a => a.Length))
            .Where(s => s.StartsWith('-') && s.Skip(1).All(c => c == '-' || char.IsAsciiLetterOrDigit(c))).Distinct(StringComparer.Ordinal);

    /// <summary>Whether the option takes a value (a flag does not).</summary>
    public static bool TakesValue(Option option) => option.Arity.MaximumNumberOfValues > 0 && option.ValueType != typeof(bool);

    /// <summary>The name a value is shown with (<c>FMT</c>), or the option's own name in capitals.</summary>
    public static string ValueName(Option option) =>
        option.HelpName ?? option.Name.TrimStart('-').ToUpperInvariant();

    /// <summary>The values an option takes, when they are a fixed list (its completions).</summary>
    public static IReadOnlyList<string> FixedValues(Option option) =>
        option.ValueType == typeof(bool) ? [] : [.. option.GetCompletions(System.CommandLine.Completions.CompletionContext.Empty).Select(c => c.Label)];
}
