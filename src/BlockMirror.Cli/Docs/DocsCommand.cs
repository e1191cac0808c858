using System.CommandLine;

namespace BlockMirror.Cli.Docs;

/// <summary>
/// <c>blockmirror generate-docs --man-dir DIR --bash-completion FILE</c>, hidden: writes the man pages and the
/// completion script from the command tree (publish.sh runs it for the Debian package). A build step, not a
/// user's command: it replaces the files it writes.
/// </summary>
static class DocsCommand
{
    public static Command Create(RootCommand root)
    {
        var manDir = new Option<string?>("--man-dir") { Description = "Write blockmirror.1 and blockmirror-COMMAND.1 into this directory" };
        var completion = new Option<string?>("--bash-completion") { Description = "Write the bash completion script to this file" };
        var command = new Command("generate-docs", "Write the man pages and the bash completion script") { manDir, completion };
        command.Hidden = true;
        command.SetAction(parse =>
        {
            if (parse.GetValue(manDir) is { } dir)
            {
                Directory.CreateDirectory(dir);
                var version = CommandLineRules.VersionText.Split(' ')[2];
                foreach (var page in CommandTree.Visible(root).Prepend(root))
                {
                    File.WriteAllText(Path.Combine(dir, ManPageWriter.FileName(page, root)), ManPageWriter.Page(page, root, version));
                }
            }

            if (parse.GetValue(completion) is { } file)
            {
                File.WriteAllText(file, BashCompletionWriter.Script(root));
            }

            return 0;
        });
        return command;
    }
}
