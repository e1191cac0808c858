using System.CommandLine;
using System.Text;
using BlockMirror.Cli.Commands;

namespace BlockMirror.Cli.Docs;

/// <summary>
/// A bash completion script, written from the command definitions: the commands after <c>blockmirror</c>,
/// each command's options after <c>-</c>, an option's values where they are a fixed list, file names
/// otherwise. Plain bash (COMP_WORDS, compgen): it needs no bash-completion helpers.
/// </summary>
static class BashCompletionWriter
{
    public static string Script(RootCommand root)
    {
        var script = new StringBuilder();
        script.Append("# bash completion for blockmirror; written by 'blockmirror generate-docs' from the command definitions.\n");
        script.Append("_blockmirror()\n{\n");
        script.Append("    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} command= i\n");
        var commands = CommandTree.Visible(root).ToList();
        script.Append("    for ((i = 1; i < COMP_CWORD; i++)); do\n        case ${COMP_WORDS[i]} in\n");
        script.Append("            ").Append(string.Join('|', commands.Select(c => c.Name))).Append(") command=${COMP_WORDS[i]}; break ;;\n");
        script.Append("        esac\n    done\n    case $command in\n");
        script.Append("        '')\n            if [[ $cur == -* ]]; then\n                COMPREPLY=($(compgen -W '")
            .Append(string.Join(' ', CommandTree.Options(root, root).SelectMany(CommandTree.Spellings)))
            .Append("' -- \"$cur\"))\n            else\n                COMPREPLY=($(compgen -W '").Append(string.Join(' ', commands.Select(c => c.Name)))
            .Append("' -- \"$cur\"))\n            fi\n            return ;;\n");
        foreach (var command in commands)
        {
            var options = CommandTree.Options(command, root).ToList();
            script.Append("        ").Append(command.Name).Append(")\n");
            var fixedValues = options.Where(o => CommandTree.TakesValue(o) && CommandTree.FixedValues(o).Count > 0).ToList();
            if (fixedValues.Count > 0)
            {
                script.Append("            case $prev in\n");
                foreach (var option in fixedValues)
                {
                    script.Append("                ").Append(string.Join('|', CommandTree.Spellings(option))).Append(") COMPREPLY=($(compgen -W '")
                        .Append(string.Join(' ', CommandTree.FixedValues(option))).Append("' -- \"$cur\")); return ;;\n");
                }

                script.Append("            esac\n");
            }

            // serve takes qemu-storage-daemon's options, which the daemon reads itself.
            var spellings = options.SelectMany(CommandTree.Spellings).Concat(command.Name == "serve" ? ServeCommand.Known : []);
            script.Append("            if [[ $cur == -* ]]; then\n                COMPREPLY=($(compgen -W '").Append(string.Join(' ', spellings))
                .Append("' -- \"$cur\"))\n                return\n            fi\n            ;;\n");
        }

        script.Append("    esac\n    COMPREPLY=($(compgen -f -- \"$cur\"))\n}\n");
        script.Append("complete -o filenames -F _blockmirror blockmirror\n");
        return script.ToString();
    }
}
