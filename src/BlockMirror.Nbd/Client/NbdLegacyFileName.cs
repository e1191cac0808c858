using BlockMirror.Block.Drivers;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// The NBD file names older than URIs, as QEMU 7.2 reads them (nbd_parse_filename, inet_parse):
/// <code>
///   nbd:unix:PATH[:exportname=NAME]
///   nbd:HOST:PORT[,OPTIONS][:exportname=NAME]        HOST: up to 64 characters, or [IPv6]; PORT: up to 32
///   nbd::PORT[...]                                   an empty host
/// </code>
/// The first <c>:exportname=</c> ends the address and everything after it is the export, colons included.
/// PORT is a string passed on as it is (the connection refuses a bad one). The OPTIONS (<c>to=</c>, <c>ipv4</c>,
/// <c>ipv6</c>, <c>keep-alive</c>, <c>mptcp</c>) are checked and then dropped, as QEMU drops them; others are
/// ignored.
/// </summary>
static class NbdLegacyFileName
{
    const string ExportOption = ":exportname=";
    const int MaxHost = 64;
    const int MaxPort = 32;

    public static NbdFileNameOptions Parse(string fileName)
    {
        var address = fileName;
        string? export = null;
        var at = fileName.IndexOf(ExportOption, StringComparison.Ordinal);
        if (at >= 0)
        {
            // QEMU stops reading at an empty ":exportname=", server and all.
            if (at + ExportOption.Length == fileName.Length)
            {
                throw ServerMissing();
            }

            address = fileName[..at];
            export = fileName[(at + ExportOption.Length)..];
        }

        if (!address.StartsWith("nbd:", StringComparison.Ordinal))
        {
            throw new BlockOpenException("File name string for NBD must start with 'nbd:'");
        }

        var spec = address["nbd:".Length..];
        if (spec.Length == 0)
        {
            throw ServerMissing();
        }

        if (spec.StartsWith("unix:", StringComparison.Ordinal))
        {
            return new NbdFileNameOptions(spec["unix:".Length..], null, null, export);
        }

        var (host, port) = ParseInet(spec);
        return new NbdFileNameOptions(null, host, port, export);
    }

    /// <summary>QEMU's words when a file name gives no server (nbd_config).</summary>
    static BlockOpenException ServerMissing() => new("NBD server address missing");

    /// <summary>inet_parse: <c>HOST:PORT</c>, <c>[HOST]:PORT</c> or <c>:PORT</c>, then the options; their words on a refusal.</summary>
    static (string Host, string Port) ParseInet(string spec)
    {
        string host;
        int portStart;
        if (spec.StartsWith(':'))
        {
            host = "";
            portStart = 1;
            if (Span(spec, portStart, ',', MaxPort) == 0)
            {
                throw new BlockOpenException($"error parsing port in address '{spec}'");
            }
        }
        else if (spec.StartsWith('['))
        {
            var length = Span(spec, 1, ']', MaxHost);
            var close = 1 + length;
            if (length == 0 || At(spec, close) != ']' || At(spec, close + 1) != ':' || Span(spec, close + 2, ',', MaxPort) == 0)
            {
                throw new BlockOpenException($"error parsing IPv6 address '{spec}'");
            }

            host = spec[1..close];
            portStart = close + 2;
        }
        else
        {
            var length = Span(spec, 0, ':', MaxHost);
            if (length == 0 || At(spec, length) != ':' || Span(spec, length + 1, ',', MaxPort) == 0)
            {
                throw new BlockOpenException($"error parsing address '{spec}'");
            }

            host = spec[..length];
            portStart = length + 1;
        }

        var portLength = Span(spec, portStart, ',', MaxPort);
        CheckOptions(spec[(portStart + portLength)..]);
        return (host, spec.Substring(portStart, portLength));
    }

    /// <summary>
    /// inet_parse's option checks, in its order; each option is found anywhere in the rest (a substring
    /// search, as QEMU's), and a flag's value runs to the next comma.
    /// </summary>
    static void CheckOptions(string options)
    {
        var to = options.IndexOf(",to=", StringComparison.Ordinal);
        if (to >= 0 && !IsTimeout(options.AsSpan(to + ",to=".Length)))
        {
            throw new BlockOpenException("error parsing to= argument");
        }

        foreach (var flag in (ReadOnlySpan<string>)["ipv4", "ipv6", "keep-alive", "mptcp"])
        {
            var at = options.IndexOf("," + flag, StringComparison.Ordinal);
            if (at < 0)
            {
                continue;
            }

            var value = options[(at + 1 + flag.Length)..];
            var comma = value.IndexOf(',');
            var own = comma < 0 ? value : value[..comma];
            // ",,": QEMU's escaped comma, which a flag may not hold.
            if ((comma >= 0 && At(value, comma + 1) == ',') || own is not ("" or "=on" or "=off"))
            {
                throw new BlockOpenException($"error parsing '{flag}' flag '{value}'");
            }
        }
    }

    /// <summary>sscanf's <c>%d</c> (blanks, a sign, digits) followed by the end or a comma.</summary>
    static bool IsTimeout(ReadOnlySpan<char> text)
    {
        var i = 0;
        while (i < text.Length && text[i] is ' ' or '\t' or '\n' or '\v' or '\f' or '\r')
        {
            i++;
        }

        if (i < text.Length && text[i] is '+' or '-')
        {
            i++;
        }

        var digits = i;
        while (i < text.Length && char.IsAsciiDigit(text[i]))
        {
            i++;
        }

        return i > digits && (i == text.Length || text[i] == ',');
    }

    /// <summary>sscanf's <c>%N[^stop]</c>: how many characters from <paramref name="start"/> are not <paramref name="stop"/>, at most <paramref name="max"/>.</summary>
    static int Span(string s, int start, char stop, int max)
    {
        var i = start;
        while (i < s.Length && s[i] != stop && i - start < max)
        {
            i++;
        }

        return i - start;
    }

    static char At(string s, int i) => i < s.Length ? s[i] : '\0';
}
