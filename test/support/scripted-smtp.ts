/**
 * A scripted SMTP peer for replies the `smtp-server` package cannot be made to give (a refused
 * DATA command, a malformed reply line). It answers each command line from a script and keeps
 * nothing; use `startTestSmtp()` for everything it can do.
 */
import net from "node:net";

export interface SmtpScript {
  /** The greeting. @default "220 scripted ESMTP" */
  readonly greeting?: string;
  /** The reply to RCPT TO for this address. @default "250 2.1.5 Ok" */
  readonly rcpt?: (address: string) => string;
  /** The reply to DATA; a 354 lets the message in. @default "354 go ahead" */
  readonly data?: () => string;
  /** Offer PIPELINING in the EHLO reply. @default true */
  readonly pipelining?: boolean;
}

export interface ScriptedSmtp {
  readonly port: number;
  /** Command lines received, in order (a message body shows as `<body>`). */
  readonly log: string[];
  close(): Promise<void>;
}

export async function startScriptedSmtp(script: SmtpScript): Promise<ScriptedSmtp> {
  const log: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    socket.write(`${script.greeting ?? "220 scripted ESMTP"}\r\n`);
    let buffer = "";
    let inData = false;
    socket.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("latin1");
      for (;;) {
        if (inData) {
          const end = buffer.startsWith(".\r\n") ? 0 : buffer.indexOf("\r\n.\r\n");
          if (end < 0) return;
          buffer = buffer.slice(end === 0 ? 3 : end + 5);
          inData = false;
          log.push("<body>");
          socket.write("250 2.0.0 Ok: queued as SCRIPTED1\r\n");
          continue;
        }
        const i = buffer.indexOf("\r\n");
        if (i < 0) return;
        const line = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        log.push(line);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === "EHLO") socket.write(`250-scripted\r\n${script.pipelining === false ? "" : "250-PIPELINING\r\n"}250 8BITMIME\r\n`);
        else if (verb === "HELO" || verb === "MAIL" || verb === "RSET") socket.write("250 Ok\r\n");
        else if (verb === "RCPT") socket.write(`${script.rcpt?.(line.replace(/^RCPT TO:<(.*)>.*$/i, "$1")) ?? "250 2.1.5 Ok"}\r\n`);
        else if (verb === "DATA") {
          const reply = script.data?.() ?? "354 go ahead";
          socket.write(`${reply}\r\n`);
          inData = reply.startsWith("354");
        } else if (verb === "QUIT") socket.end("221 Bye\r\n");
        else socket.write("502 5.5.2 Error: command not recognized\r\n");
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    log,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
