using System.Text.Json;
using BlockMirror.Block.Drivers;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// What an NBD file name says, as the <c>nbd</c> driver's own options (QEMU's BlockdevOptionsNbd members
/// <c>server</c> and <c>export</c>): a Unix socket path, or a host and port (a string, as QAPI's
/// InetSocketAddress has it: the legacy form passes it on unchecked and the connection refuses a bad one).
/// </summary>
/// <param name="UnixPath">The socket of <c>server.type=unix</c>; null for inet.</param>
/// <param name="Host">The host of <c>server.type=inet</c> (an IPv6 literal without its brackets).</param>
/// <param name="Port">The port of <c>server.type=inet</c>.</param>
/// <param name="Export">The export name; null asks for the server's default export ("").</param>
public sealed record NbdFileNameOptions(string? UnixPath, string? Host, string? Port, string? Export)
{
    /// <summary>For <c>nbds://</c> and <c>nbds+unix://</c>: the TLS the connection must use; null for plain NBD.</summary>
    public NbdUriTls? Tls { get; init; }

    /// <summary>
    /// Writes <c>server</c> and, when there is one, <c>export</c> as blockdev-add members; over TLS also
    /// <c>tls-creds</c> or <c>tls-certificates</c>, and <c>tls-hostname</c>.
    /// </summary>
    public void WriteTo(Utf8JsonWriter writer)
    {
        writer.WriteStartObject("server");
        if (UnixPath is { } path)
        {
            writer.WriteString("type", "unix");
            writer.WriteString("path", path);
        }
        else
        {
            writer.WriteString("type", "inet");
            writer.WriteString("host", Host);
            writer.WriteString("port", Port);
        }

        writer.WriteEndObject();
        if (Export is { } export)
        {
            writer.WriteString("export", export);
        }

        if (Tls is { } tls)
        {
            if (tls.Creds is { } creds)
            {
                writer.WriteString("tls-creds", creds);
            }
            else
            {
                writer.WriteString(NbdDeclaration.TlsCertificatesOption, tls.Certificates);
            }

            if (tls.Hostname is { } hostname)
            {
                writer.WriteString("tls-hostname", hostname);
            }
        }
    }
}

/// <summary>
/// QEMU 7.2's NBD file names (block/nbd.c, nbd_parse_filename): a URI when the name holds <c>://</c>
/// (<see cref="NbdUri"/>), else the legacy <c>nbd:unix:PATH[:exportname=NAME]</c> /
/// <c>nbd:HOST:PORT[:exportname=NAME]</c> (<see cref="NbdLegacyFileName"/>). Refusals are
/// <see cref="BlockOpenException"/>s in QEMU's words.
/// </summary>
/// <remarks>
/// QEMU 7.2 has no <c>nbds</c> scheme (<c>Unknown protocol 'nbds'</c>): a TLS connection takes
/// <c>tls-creds</c> on a <c>driver=nbd</c> node. Here <c>nbds://</c> and <c>nbds+unix://</c> are read as
/// libnbd reads them, with the credentials <see cref="NbdUriTls"/> describes (a deliberate difference).
/// </remarks>
public static class NbdFileName
{
    /// <summary>The protocol prefixes QEMU's three nbd drivers claim (<c>protocol_name</c>).</summary>
    public static IReadOnlyList<string> Protocols { get; } = ["nbd", "nbd+tcp", "nbd+unix", "nbds", "nbds+unix"];

    /// <summary>Parses a file name that starts with one of <see cref="Protocols"/>.</summary>
    /// <exception cref="BlockOpenException">The name is not one QEMU accepts; the message is QEMU's.</exception>
    public static NbdFileNameOptions Parse(string fileName) =>
        fileName.Contains("://", StringComparison.Ordinal)
            ? NbdUri.Parse(fileName) ?? throw new BlockOpenException("No valid URL specified")
            : NbdLegacyFileName.Parse(fileName);

    /// <summary>Writes the driver's options for <paramref name="fileName"/> (the registry's file-name hook).</summary>
    public static void WriteOptions(string fileName, Utf8JsonWriter writer) => Parse(fileName).WriteTo(writer);
}
