import mysql.connector, sys
port = int(sys.argv[1])
c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="secret",
                            database="shop", use_pure=True, ssl_disabled=True)
cur = c.cursor(prepared=True)
cur.execute("SELECT id, name FROM items WHERE id > %s", (1,))
print(cur.fetchall())
cur.execute("SELECT id, name FROM items WHERE id > %s", (2,))
print(cur.fetchall())
cur.close()
cur = c.cursor(prepared=True)
cur.execute("INSERT INTO items VALUES (%s, %s)", (5, "lime"))
cur.execute("DELETE FROM items WHERE id = %s", (5,))
cur.close()
cur = c.cursor(prepared=True)
try:
    cur.execute("SELECT * FROM nowhere WHERE id = %s", (1,))
except mysql.connector.Error as e:
    print("error", e.errno)
cur.close()
c.commit()
c.close()
