namespace BlockMirror.Cli.Logging;

/// <summary>
/// An event name pattern of QEMU's <c>--trace</c>: <c>*</c> matches any run of characters, <c>?</c> any one
/// (GLib's g_pattern_match_simple, which QEMU uses). As in QEMU, only a <c>*</c> makes it a pattern: a name
/// without one that matches no event is warned about.
/// </summary>
static class TracePattern
{
    public static bool IsPattern(string pattern) => pattern.Contains('*', StringComparison.Ordinal);

    public static bool Matches(ReadOnlySpan<char> pattern, ReadOnlySpan<char> name)
    {
        // Iterative glob with one backtrack point: the last '*' seen and where its run would end.
        int p = 0, n = 0, star = -1, resume = 0;
        while (n < name.Length)
        {
            if (p < pattern.Length && (pattern[p] == '?' || pattern[p] == name[n]))
            {
                p++;
                n++;
            }
            else if (p < pattern.Length && pattern[p] == '*')
            {
                star = p++;
                resume = n;
            }
            else if (star >= 0)
            {
                p = star + 1;
                n = ++resume;
            }
            else
            {
                return false;
            }
        }

        while (p < pattern.Length && pattern[p] == '*')
        {
            p++;
        }

        return p == pattern.Length;
    }
}
