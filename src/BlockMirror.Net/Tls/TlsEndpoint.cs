namespace BlockMirror.Net.Tls;

/// <summary>Which end of a connection a set of credentials is for (QEMU's <c>endpoint=server|client</c>).</summary>
public enum TlsEndpoint
{
    Client,
    Server,
}
