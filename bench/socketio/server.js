// The Socket.IO reference of scripts/bench-curve (docs/performance.md,
// "Cost curve"): one process, WebSocket transport only, no adapter.
//   node server.js PORT
// A client emits join(room, ack) to join a room, and pub(room, text) to send
// text to everyone in the room (the publisher does not join); receivers get
// msg(text). Loopback only.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 24390);
const server = http.createServer();
const io = new Server(server, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
});
io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack();
  });
  socket.on("pub", (room, text) => {
    io.to(String(room)).emit("msg", text);
  });
});
server.listen(port, "127.0.0.1", () => {
  console.log(`socket.io listening on 127.0.0.1:${port}`);
});
