import mysql.connector, sys
from mysql.connector.constants import ClientFlag
port = int(sys.argv[1])
c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="secret",
                            database="shop", use_pure=True, ssl_disabled=True,
                            client_flags=[ClientFlag.DEPRECATE_EOF])
cur = c.cursor()
cur.execute("SELECT id, name FROM items ORDER BY id")
print(cur.fetchall())
cur.execute("SELECT name FROM items WHERE id = 99")
print(cur.fetchall())
cur.close()
cur = c.cursor(prepared=True)
cur.execute("SELECT id FROM items WHERE id < %s", (3,))
print(cur.fetchall())
cur.close()
c.close()
